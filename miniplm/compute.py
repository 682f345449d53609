"""What a run spent, in FLOPs, and the compute behind each student's results.

Recording: every stage that runs a model puts `flops` into the counts it
finishes with (so into the manifest), made by `record`: FLOPs per part of its
work (`teacher`, `reference`, `training`, ...) and their total. Counts are
model FLOPs (models/flops.py): every matmul, a forward once, training three
times (forward and backward; recomputation under gradient checkpointing not
counted), over the sequences the work is defined by: a scored document's
windows, an instance, a training row's seq_len positions (a padded instance
row included), an evaluated text's windows. Padding added to fill a batch is
not counted, and a killed and resumed run records what an uninterrupted one
does.

Charging: a student's compute is its own training plus its share of the work
its training data needed. `UPSTREAM` names that work per token-set input: the
selected text needed the reference's training (when this run trains it) and
the scoring by teacher and reference. That shared work is split equally over
the job's students that train on it (a student's seed replicas repeat one
experiment: each carries the student's full share). A student on a random
selection or a split is charged its training alone: it needs no scores.
A distilled student's training includes the teacher's forward passes in the
loop (online), or its share of the teacher-logits set it reads (offline).
"""

from __future__ import annotations

from typing import Any

from miniplm.config import JobConfig
from miniplm.replicas import base_name, trained_students
from miniplm.rundir import RunDir

# Per token-set input, the manifest entries whose work a student trained on it shares.
UPSTREAM: dict[str, tuple[str, ...]] = {"selected": ("train/reference", "score")}

RULE = ("Compute is model FLOPs (every matmul; training counts forward and backward as three forwards). A "
        "student's total is its own training plus an equal share, among the students that train on the same "
        "selection, of the work that selection needed: the reference's training (when the run trains it) and "
        "the teacher's and the reference's scoring. Seed replicas repeat one student and each carries its full "
        "share. A student on a random selection or a split is charged its training alone. A distilled student's "
        "training includes the teacher's forward passes (online KD), or it carries an equal share of the stored "
        "teacher log-probs it reads among the students that read them (offline KD).")


def record(**flops: float) -> dict[str, Any]:
    """The `flops` entry of a stage's counts: FLOPs per part of its work, and the total."""
    by = {name: float(value) for name, value in flops.items()}
    return {"by": by, "total": float(sum(by.values()))}


def spent(rd: RunDir, entry: str, part: str | None = None) -> float | None:
    """The FLOPs a finished manifest entry recorded (in all, or for one part of its work); None when
    it is not done or recorded none."""
    state = rd.stage_state(entry)
    if state.get("state") != "done":
        return None
    flops = state.get("counts", {}).get("flops")
    if flops is None:
        return None
    return float(flops["total"] if part is None else flops["by"].get(part, 0.0))


def student_compute(job: JobConfig, rd: RunDir) -> dict[str, dict[str, float | None]]:
    """Per trained student (seed replicas included): its training FLOPs, its share of the shared
    work (`UPSTREAM`), and the total; None where a stage recorded nothing."""
    inputs = {t.name: t.input for t in job.tokenize}
    students = trained_students(job)
    out: dict[str, dict[str, float | None]] = {}
    for student in students:
        source = inputs.get(student.tokens, "")
        sharing = {base_name(s.name) for s in students if inputs.get(s.tokens) == source}
        upstream = [spent(rd, entry) for entry in UPSTREAM.get(source, ())
                    if entry != "train/reference" or (job.reference is not None and job.reference.train is not None)]
        share = sum(u for u in upstream if u is not None) / len(sharing) if upstream else 0.0
        if any(u is None for u in upstream):
            share = None
        training = spent(rd, f"train/{student.name}", "training")  # its held-out evaluations made nothing
        if training is not None:  # online KD: the teacher's forward passes in the loop
            training += spent(rd, f"train/{student.name}", "teacher") or 0.0
        if share is not None and student.kd is not None and student.kd.source == "offline":
            # the stored log-probs: shared by the students that read the same set
            readers = {base_name(s.name) for s in students if s.kd is not None and s.kd.logits == student.kd.logits}
            stored = spent(rd, f"teacher-logits/{student.kd.logits}")
            share = share + stored / len(readers) if stored is not None else None
        total = training + share if training is not None and share is not None else None
        out[student.name] = {"training": training, "shared": share, "total": total}
    return out

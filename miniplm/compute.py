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
its training data and starting weights needed. That work is manifest entries
(`upstream`), found by following what each stage reads (`Stage.reads`, from
the student's training back) to the entries that run a model
(`Stage.spends_compute`): the selected text needed the reference's training (when this
run trains it) and the scoring by teacher and reference; a generated corpus
its generate entry; a mix the work of every set it draws on; scores from a proxy
the proxy's fitting and prediction and the LM scores of its sample (when the LMs
scored every unit beside it, the proxy charges the sample's share itself); a student
started from pruned weights the prune entry; offline KD the teacher-logits set
it reads. Each entry's FLOPs are split equally over the job's students that
need it (a student's seed replicas repeat one experiment: each carries the
student's full share). A student on a random selection or a split is charged
its training alone: it needs no scores. An online-KD student's training
includes the teacher's forward passes in the loop.
"""

from __future__ import annotations

from typing import Any

from miniplm import outputs
from miniplm.inputs import Upstream
from miniplm.replicas import base_name, trained_students
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.students import StudentConfig
from miniplm.stage import Stage, Step, registered

RULE = (
    "Compute is model FLOPs (every matmul; training counts forward and backward as three forwards). A "
    "student's total is its own training plus an equal share, among the students that need it, of the work "
    "its data and starting weights needed: for selected text the reference's training (when the run trains "
    "it) and the teacher's and the reference's scoring (from a proxy: the scoring of its sample, its fit and its "
    "prediction); for teacher-written text its generation; for a mix "
    "the work of each set it draws on; for pruned weights the pruning; for offline KD the stored teacher "
    "log-probs. Seed replicas repeat one student and each carries its full share. A student on a random "
    "selection or a split is charged its training alone. An online-KD student's training includes the "
    "teacher's forward passes."
)


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


def _owners(job: JobConfig) -> dict[str, tuple[Stage, Step]]:
    """Per manifest entry of the job, the stage and the step that make it."""
    return {
        entry: (stage, step)
        for stage in registered()
        if stage.applies(job)
        for step in stage.steps(job)
        for entry in stage.entries(job, step)
    }


def upstream(job: JobConfig, student: StudentConfig, owner: dict[str, tuple[Stage, Step]] | None = None) -> set[str]:
    """The manifest entries whose work a student's training needed: every part that runs a model
    among what its training reads, directly or through other stages' outputs (each stage's
    `reads`), except behind an output that needed none of its stage's inputs' work (a random control).
    `owner`: `_owners(job)`, when the caller has it already."""
    owner = _owners(job) if owner is None else owner
    entries: set[str] = set()
    seen: set[str] = set()
    pending = [outputs.trained(student.name).stage]
    while pending:
        entry = pending.pop()
        found = owner.get(entry)
        if found is None:
            continue
        stage, step = found
        # the part the entry names (select-proxy reads the proxy's scores, select the LMs'); a stage whose
        # entries are not its parts' names (train-reference) reads through all of them
        parts = stage.parts(job, step.only)
        parts = [part for part in parts if part.name == entry] or parts
        for read in (r for part in parts for r in stage.reads(job, part)):
            if not isinstance(read, Upstream) or not read.charged or read.stage in seen:
                continue
            seen.add(read.stage)
            if read.stage in owner and owner[read.stage][0].spends_compute(read.stage):
                entries.add(read.stage)
            if not outputs.unscored(read):
                pending.append(read.stage)
    return entries


def student_compute(job: JobConfig, rd: RunDir) -> dict[str, dict[str, float | None]]:
    """Per trained student (seed replicas included): its training FLOPs (with an online teacher's),
    of which the teacher's forward passes in the loop, its share of the work it needed (`upstream`),
    and the total; None where a stage recorded nothing."""
    students = trained_students(job)
    owner = _owners(job)
    needs = {s.name: upstream(job, s, owner) for s in students}
    out: dict[str, dict[str, float | None]] = {}
    for student in students:
        share: float | None = 0.0
        for entry in sorted(needs[student.name]):
            sharing = {base_name(s.name) for s in students if entry in needs[s.name]}
            cost = spent(rd, entry)
            share = share + cost / len(sharing) if share is not None and cost is not None else None
        training = spent(rd, outputs.trained(student.name).stage, "training")  # its held-out evaluations made nothing
        teacher = None
        if training is not None:  # online KD: the teacher's forward passes in the loop
            teacher = spent(rd, outputs.trained(student.name).stage, "teacher") or 0.0
            training += teacher
        total = training + share if training is not None and share is not None else None
        out[student.name] = {"training": training, "teacher": teacher, "shared": share, "total": total}
    return out

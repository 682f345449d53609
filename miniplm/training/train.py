"""`miniplm train`: every student of the job (or one), each with DeepSpeed, in this process
or as one rank of torchrun / the deepspeed launcher / srun."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Iterator

from miniplm import outputs
from miniplm.errors import ConfigError, StageError
from miniplm.files import LockHeld, held_lock
from miniplm.inputs import Input, Model, sources
from miniplm.jobfile import dump_job
from miniplm.lookups import teacher_model, token_set_named, tokenizer_name
from miniplm.models.loading import load_tokenizer, resolve_model
from miniplm.replicas import base_name, trained_students
from miniplm.rundir import RunDir
from miniplm.schema.hashing import hashable_dump
from miniplm.schema.job import JobConfig
from miniplm.schema.students import StudentConfig
from miniplm.schema.tokenize import TokenSet
from miniplm.stage import Part, Stage, Step, only_one
from miniplm.training import teacher_logits
from miniplm.training.launch import init_distributed
from miniplm.workers import Worker

NAME = "train"


def stage_name(student: StudentConfig) -> str:
    return f"{NAME}/{student.name}"


def training_reads(job: JobConfig, student: StudentConfig) -> list[Input]:
    """What a student's training depends on: its settings, its token set (and held-out set), its
    config file or the weights it starts from, and for distillation the teacher or the stored
    log-probs it reads."""
    dumped = hashable_dump(student)
    dumped.pop("seq_len", None)  # a reference's seq_len is its token set's, hashed there
    reads: list[Input] = [
        str(sorted(dumped.items())),
        outputs.tokens(student.tokens, why=f"student {student.name!r} trains on token set {student.tokens!r}"),
    ]
    if student.config is not None:
        reads.append(Model("config", student.config))
    if student.init is not None and any(p.name == student.init for p in job.prune):
        reads.append(
            outputs.pruned(student.init, why=f"student {student.name!r} starts from the pruned model {student.init!r}")
        )
    elif student.init is not None:
        reads.append(Model("init", student.init))
    if student.heldout:
        reads.append(
            outputs.tokens(
                student.heldout, why=f"student {student.name!r} measures held-out loss on token set {student.heldout!r}"
            )
        )
    kd = student.kd
    if kd is not None and kd.source == "offline":
        reads.append(
            outputs.teacher_logits(
                str(kd.logits), why=f"student {student.name!r} reads teacher log-probs {kd.logits!r}"
            )
        )
    elif kd is not None:
        teacher, dtype = teacher_model(job, kd.teacher)
        reads += [dtype, Model("kd teacher", resolve_model(teacher))]
    return reads


def _check_teacher(job: JobConfig, student: StudentConfig) -> None:
    """An online teacher's tokenizer must be the student's (checked before any work)."""
    if student.kd is not None and student.kd.source == "online":
        teacher = teacher_model(job, student.kd.teacher)[0]
        teacher_logits.check_teacher_tokenizer(job, teacher, student.tokens, f"students.{student.name}.kd")


@contextlib.contextmanager
def one_training(rd: RunDir, name: str, student: StudentConfig, rank: int) -> Iterator[None]:
    """Hold a student's lock (taken by rank 0) for the block: two trainings of one student would write
    the same checkpoints and metrics. The second is refused, told which process trains it."""
    from miniplm import distributed

    with contextlib.ExitStack() as stack:
        holder = None
        if rank == 0:
            try:
                stack.enter_context(held_lock(rd.training(student.name).with_name(f".{student.name}.lock")))
            except LockHeld as e:
                holder = e.holder
        if not distributed.broadcast_flag(holder is None, src=0):
            raise StageError(
                f"{rd.root}: {name} is being trained by another process ({holder or 'see rank 0'}); "
                "wait for it to finish, or stop it and run this again"
            )
        yield


def train_models(
    job: JobConfig,
    stage: Stage,
    students: list[StudentConfig],
    token_sets: list[TokenSet],
    *,
    force: bool = False,
    show_progress: bool = True,
) -> dict:
    """Train each of `students` once (skipping those finished under the same config); their counts."""
    from miniplm import distributed

    rd = RunDir(job.run_dir)
    rank = init_distributed()
    results = {}
    for student in students:
        name = stage_name(student)
        with one_training(rd, name, student, rank):
            _check_teacher(job, student)
            reads = training_reads(job, student)
            config_hash, inputs = stage.fingerprint(job, rd, name, reads)
            outputs = [rd.model(student.name), rd.training(student.name)]
            command = f"miniplm {stage.name}" + (f" --only {student.name}" if stage.only else "")
            done = (
                rd.open_stage(
                    name,
                    config_hash,
                    dump_job(job),
                    outputs,
                    force=force,
                    inputs=inputs,
                    command=command,
                    sources=sources(reads),
                )
                if rank == 0
                else False
            )
            if distributed.broadcast_flag(done, src=0):
                results[student.name] = rd.stage_state(name)["counts"]
                continue
            distributed.barrier()
            from miniplm.training.trainer import train

            tokenizer = load_tokenizer(tokenizer_name(job, token_set_named(job, student.tokens, token_sets)))
            tokenizer.model_max_length = sys.maxsize
            try:
                counts = train(job, student, rd, tokenizer, show_progress)
            except Exception as e:  # anything but an interrupt: the manifest must not say running
                if rank == 0:
                    rd.fail_stage(name, str(e))
                raise
            distributed.barrier()
            if rank == 0:
                rd.finish_stage(name, counts, show_progress=show_progress)
                rd.clean_scratch(name)
            results[student.name] = counts
    return results


def training_progress(rd: RunDir, name: str) -> str:
    """The last step a model's training logged, in words."""
    try:
        last = rd.metrics(name).read_text().splitlines()[-1]
        return f"step {json.loads(last)['step']}"
    except (FileNotFoundError, IndexError, KeyError, json.JSONDecodeError):
        return ""


class Train(Stage):
    """One step per student, each run as the ranks of one distributed job."""

    name = NAME
    summary = "pretrain the job's students with DeepSpeed"
    description = (
        "Train each student on its token set and write RUN_DIR/models/NAME (save_pretrained, with the "
        "tokenizer), metrics and checkpoints in RUN_DIR/train/NAME. Run it alone, or under torchrun, the "
        "deepspeed launcher or srun for several processes; a killed run resumes from its last checkpoint."
    )
    kind = "ranks"
    only = "student"

    def check(self, job: JobConfig) -> None:
        """Distillation from a teacher the job has, or from stored log-probs of the student's token set
        at its temperature; names that are not a seed replica's; a student distilled online from a
        teacher with another tokenizer fails when the job loads."""
        sets = {t.name: t for t in job.teacher_logits}
        for s in job.students:
            kd = s.kd
            if kd is None:
                continue
            where = f"students.{s.name}.kd"
            if kd.teacher == "teacher" and kd.source == "online" and job.teacher is None:
                raise ConfigError(f"{where}: teacher is the job's teacher, and the job has none")
            if kd.logits is None:
                continue
            if kd.logits not in sets:
                raise ConfigError(
                    f"{where}.logits: no teacher_logits set {kd.logits!r} in the job "
                    f"(sets: {', '.join(sets) or 'none'})"
                )
            stored = sets[kd.logits]
            if stored.tokens != s.tokens:
                raise ConfigError(
                    f"{where}.logits: set {kd.logits!r} holds log-probs for token set "
                    f"{stored.tokens!r}, and the student trains on {s.tokens!r}"
                )
            if stored.temperature != kd.temperature:
                raise ConfigError(
                    f"{where}.temperature: {kd.temperature} differs from teacher_logits.{kd.logits}."
                    f"temperature ({stored.temperature}), the temperature its log-probs were taken at"
                )
            if stored.mode == "sampled" and kd.loss != "forward_kl":
                raise ConfigError(
                    f"{where}.loss: {kd.loss} cannot be estimated from set {kd.logits!r}'s sampled tokens "
                    "(mode sampled estimates forward_kl, without bias); use loss: forward_kl, or a set of "
                    "mode top_k or top_p"
                )
        for student in job.students:
            if base_name(student.name) != student.name:
                raise ConfigError(
                    f"students: {student.name!r}: names ending in .seedN are the seed replicas' "
                    "(eval.seeds); name the student otherwise"
                )
            if student.kd is not None and student.kd.source == "online":
                teacher_logits.check_teacher_tokenizer(
                    job,
                    teacher_model(job, student.kd.teacher)[0],
                    student.tokens,
                    f"students.{student.name}.kd",
                    strict=False,
                )

    def parts(self, job: JobConfig, only: str | None = None) -> list[Part]:
        return [
            Part(stage_name(s), s, f"miniplm {NAME} --only {s.name}")
            for s in trained_students(job)
            if only is None or s.name == only
        ]

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        return training_reads(job, part.item)

    def spends_compute(self, entry: str) -> bool:
        return True

    def progress(self, job: JobConfig, rd: RunDir, step: Step) -> str:
        return training_progress(rd, str(step.only))

    def run(
        self,
        job: JobConfig,
        worker: Worker = Worker(),
        *,
        only: str | None = None,
        force: bool = False,
        show_progress: bool = True,
    ) -> dict:
        if not job.students:
            raise ConfigError("train: the job lists no students")
        names = only_one("student", [s.name for s in trained_students(job)], only, NAME)
        students = [s for s in trained_students(job) if s.name in names]
        return train_models(job, self, students, job.tokenize, force=force, show_progress=show_progress)

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        lines = []
        for name, counts in result.items():
            held = counts.get("heldout_loss")
            flops = counts.get("flops", {}).get("by", {}).get("training")
            terms = f" (CE {counts['ce_loss']:.4f}, KD {counts['kd_loss']:.4f})" if "kd_loss" in counts else ""
            lines.append(
                f"train {name}: {counts['step']} steps, {counts['tokens']:,} tokens, final loss "
                f"{counts['loss']:.4f}{terms}"
                + (f", held-out loss {held:.4f}" if held is not None else "")
                + (f", {flops:.3g} FLOPs" if flops else "")
                + (f", micro-batches of {counts['micro_batch']}" if "micro_batch" in counts else "")
                + f"; model in {job.run_dir}/models/{name}"
            )
        return lines


STAGE = Train()

"""`miniplm train`: every student of the job (or one), each with DeepSpeed, in this process
or as one rank of torchrun / the deepspeed launcher / srun."""

from __future__ import annotations

import json
import sys

from miniplm.config import (JobConfig, StudentConfig, TokenSet, dump_job, hashable_dump, teacher_model,
                            token_set_named, tokenizer_name)
from miniplm.errors import ConfigError, StageError
from miniplm.logs import library_output
from miniplm.models.loading import load_tokenizer, model_fingerprint
from miniplm.rundir import RunDir
from miniplm.stage import Stage, Step, only_one
from miniplm.training import teacher_logits
from miniplm.training.launch import set_distributed_env
from miniplm.workers import Worker

NAME = "train"


def stage_name(student: StudentConfig) -> str:
    return f"{NAME}/{student.name}"


def _token_set_hash(rd: RunDir, name: str, student: StudentConfig) -> str:
    state = rd.stage_state(f"tokenize/{name}")
    if state.get("state") != "done":
        raise StageError(f"{rd.root}: student {student.name!r} trains on token set {name!r}; "
                         "run `miniplm tokenize` first")
    return state["config_hash"]


def _kd_facts(job: JobConfig, rd: RunDir, student: StudentConfig) -> list[str]:
    """What a student's distillation depends on besides its settings: the teacher's identity (its
    tokenizer checked against the student's first), or the hash of the stored log-probs it reads."""
    kd = student.kd
    if kd is None:
        return []
    if kd.source == "offline":
        state = rd.stage_state(teacher_logits.part_name(str(kd.logits)))
        if state.get("state") != "done":
            raise StageError(f"{rd.root}: student {student.name!r} reads teacher log-probs {kd.logits!r}; "
                             "run `miniplm teacher-logits` first")
        return [state["config_hash"]]
    teacher, dtype = teacher_model(job, kd.teacher)
    teacher_logits.check_teacher_tokenizer(job, teacher, student.tokens, f"students.{student.name}.kd")
    return [model_fingerprint(teacher), dtype]


def init_distributed() -> int:
    """Join (or, alone, form) the process group; this process's rank."""
    import torch

    _, _, local_rank = set_distributed_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before anything lands on a GPU: one GPU per process
    if not torch.distributed.is_initialized():
        with library_output():  # DeepSpeed's accelerator notice and op builds
            import deepspeed

            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank()


def train_models(job: JobConfig, stage: Stage, students: list[StudentConfig], token_sets: list[TokenSet], *,
                 force: bool = False, show_progress: bool = True) -> dict:
    """Train each of `students` once (skipping those finished under the same config); their counts."""
    import torch

    rd = RunDir(job.run_dir)
    rank = init_distributed()
    results = {}
    for student in students:
        name = stage_name(student)
        dumped = hashable_dump(student)
        dumped.pop("seq_len", None)  # a reference's seq_len is its token set's, hashed there
        hashes = [_token_set_hash(rd, student.tokens, student), *_kd_facts(job, rd, student)]
        config_hash = stage.config_hash(job, str(sorted(dumped.items())), *hashes)
        outputs = [rd.model(student.name), rd.training(student.name)]
        done = rd.open_stage(name, config_hash, dump_job(job), outputs, force=force) if rank == 0 else False
        done_flag = torch.tensor([int(done)])
        torch.distributed.broadcast(done_flag, src=0)
        if done_flag.item():
            results[student.name] = rd.stage_state(name)["counts"]
            continue
        torch.distributed.barrier()
        from miniplm.training.trainer import train

        tokenizer = load_tokenizer(tokenizer_name(job, token_set_named(job, student.tokens, token_sets)))
        tokenizer.model_max_length = sys.maxsize
        try:
            counts = train(job, student, rd, tokenizer, show_progress)
        except Exception as e:  # anything but an interrupt: the manifest must not say running
            if rank == 0:
                rd.fail_stage(name, str(e))
            raise
        torch.distributed.barrier()
        if rank == 0:
            rd.finish_stage(name, counts)
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
    description = ("Train each student on its token set and write RUN_DIR/models/NAME (save_pretrained, with the "
                   "tokenizer), metrics and checkpoints in RUN_DIR/train/NAME. Run it alone, or under torchrun, the "
                   "deepspeed launcher or srun for several processes; a killed run resumes from its last checkpoint.")
    kind = "ranks"
    only = "student"

    def steps(self, job: JobConfig) -> list[Step]:
        return [Step(stage_name(s), NAME, "ranks", only=s.name) for s in job.students]

    def entries(self, job: JobConfig, step: Step) -> list[str]:
        return [step.name]

    def progress(self, job: JobConfig, rd: RunDir, step: Step) -> str:
        return training_progress(rd, str(step.only))

    def check(self, job: JobConfig) -> None:
        """A student distilled online from a teacher with another tokenizer fails when the job loads."""
        for s in job.students:
            if s.kd is not None and s.kd.source == "online":
                teacher_logits.check_teacher_tokenizer(job, teacher_model(job, s.kd.teacher)[0], s.tokens,
                                                       f"students.{s.name}.kd", strict=False)

    def run(self, job: JobConfig, worker: Worker = Worker(), *, only: str | None = None, force: bool = False,
            show_progress: bool = True) -> dict:
        if not job.students:
            raise ConfigError("train: the job lists no students")
        names = only_one("student", [s.name for s in job.students], only, NAME)
        students = [s for s in job.students if s.name in names]
        return train_models(job, self, students, job.tokenize, force=force, show_progress=show_progress)

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        lines = []
        for name, counts in result.items():
            held = counts.get("heldout_loss")
            terms = f" (CE {counts['ce_loss']:.4f}, KD {counts['kd_loss']:.4f})" if "kd_loss" in counts else ""
            lines.append(f"train {name}: {counts['step']} steps, {counts['tokens']:,} tokens, final loss "
                         f"{counts['loss']:.4f}{terms}" + (f", held-out loss {held:.4f}" if held is not None else "")
                         + f"; model in {job.run_dir}/models/{name}")
        return lines


STAGE = Train()

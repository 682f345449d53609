"""`miniplm train`: every student of the job (or one), each with DeepSpeed, in this process
or as one rank of torchrun / the deepspeed launcher / srun."""

from __future__ import annotations

import sys

from miniplm.config import (ConfigError, JobConfig, StudentConfig, TokenSet, dump_job, reference_token_set,
                            stage_config_hash)
from miniplm.models.loading import load_tokenizer
from miniplm.rundir import RunDir, StageError
from miniplm.training.launch import set_distributed_env

# Student settings that change how training is watched or saved, never the weights it ends with.
EXECUTION_ONLY = ("eval_every", "eval_rows", "checkpoint_every", "log_rows", "tensorboard", "wandb", "heldout")


def stage_name(student: StudentConfig) -> str:
    return f"train/{student.name}"


def _token_set_hash(rd: RunDir, name: str, student: StudentConfig) -> str:
    state = rd.stage_state(f"tokenize/{name}")
    if state.get("state") != "done":
        raise StageError(f"{rd.root}: student {student.name!r} trains on token set {name!r}; "
                         "run `miniplm tokenize` first")
    return state["config_hash"]


def _tokenizer_for(job: JobConfig, token_set_name: str, token_sets: list[TokenSet]):
    token_set = next((t for t in token_sets if t.name == token_set_name), None)
    if token_set is None:
        raise ConfigError(f"students: no token set {token_set_name!r} in the job's tokenize list")
    name = token_set.tokenizer or (job.teacher.model if job.teacher else None)
    if name is None:
        raise ConfigError(f"tokenize.{token_set_name}: no tokenizer given and no teacher to take it from")
    tokenizer = load_tokenizer(name)
    tokenizer.model_max_length = sys.maxsize
    return tokenizer


def _init_distributed() -> int:
    """Join (or, alone, form) the process group; this process's rank."""
    import deepspeed
    import torch

    _, _, local_rank = set_distributed_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before anything lands on a GPU: one GPU per process
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank()


def run_reference(job: JobConfig, *, force: bool = False, show_progress: bool = True) -> dict:
    """`miniplm train-reference`: tokenize the reference split with the teacher's tokenizer and train
    the reference LM into RUN_DIR/models/reference."""
    import torch

    from miniplm.corpus import tokenize
    from miniplm.rundir import resolve_worker

    if job.reference is None or job.reference.train is None:
        raise ConfigError("train-reference: the job gives no `reference: {train: {...}}`")
    _init_distributed()
    token_set = reference_token_set(job)
    tokenize.run_set(job, token_set, resolve_worker(), force=force, show_progress=show_progress)
    torch.distributed.barrier()  # every rank's share of the token shards is written
    return run(job, students=[job.reference.train], token_sets=[*job.tokenize, token_set], force=force,
               show_progress=show_progress)


def run(job: JobConfig, *, only: str | None = None, force: bool = False, show_progress: bool = True,
        students: list[StudentConfig] | None = None, token_sets: list[TokenSet] | None = None) -> dict:
    """Train the job's students (or those given), each once; returns their counts."""
    import torch

    students = [s for s in (students or job.students) if only is None or s.name == only]
    if not students:
        raise ConfigError(f"train: no student {only!r} in the job" if only else "train: the job lists no students")
    rd = RunDir(job.run_dir)
    rank = _init_distributed()
    results = {}
    for student in students:
        stage = stage_name(student)
        dumped = {k: v for k, v in student.model_dump(mode="json").items() if k not in EXECUTION_ONLY}
        dumped.pop("seq_len", None)  # a reference's seq_len is its token set's, hashed there
        hashes = [_token_set_hash(rd, student.tokens, student)]
        config_hash = stage_config_hash(job, "train", str(sorted(dumped.items())), *hashes)
        done = rd.open_stage(stage, config_hash, dump_job(job), [rd.root / "models" / student.name,
                                                                 rd.root / "train" / student.name], force=force) \
            if rank == 0 else False
        done_flag = torch.tensor([int(done)])
        torch.distributed.broadcast(done_flag, src=0)
        if done_flag.item():
            results[student.name] = rd.stage_state(stage)["counts"]
            continue
        torch.distributed.barrier()
        from miniplm.training.trainer import train

        try:
            counts = train(job, student, rd, _tokenizer_for(job, student.tokens, token_sets or job.tokenize),
                           show_progress)
        except Exception as e:  # anything but an interrupt: the manifest must not say running
            if rank == 0:
                rd.fail_stage(stage, str(e))
            raise
        torch.distributed.barrier()
        if rank == 0:
            rd.finish_stage(stage, counts)
            rd.clean_scratch(stage)
        results[student.name] = counts
    return results

"""`miniplm train`: every student of the job (or one), each with DeepSpeed, in this process
or as one rank of torchrun / the deepspeed launcher / srun."""

from __future__ import annotations

import sys

from miniplm.config import ConfigError, JobConfig, StudentConfig, dump_job, stage_config_hash
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


def _tokenizer_for(job: JobConfig, token_set_name: str):
    token_set = next((t for t in job.tokenize if t.name == token_set_name), None)
    if token_set is None:
        raise ConfigError(f"students: no token set {token_set_name!r} in the job's tokenize list")
    name = token_set.tokenizer or (job.teacher.model if job.teacher else None)
    if name is None:
        raise ConfigError(f"tokenize.{token_set_name}: no tokenizer given and no teacher to take it from")
    tokenizer = load_tokenizer(name)
    tokenizer.model_max_length = sys.maxsize
    return tokenizer


def run(job: JobConfig, *, only: str | None = None, force: bool = False, show_progress: bool = True) -> dict:
    students = [s for s in job.students if only is None or s.name == only]
    if not students:
        raise ConfigError(f"train: no student {only!r} in the job" if only else "train: the job lists no students")
    rd = RunDir(job.run_dir)
    set_distributed_env()
    import deepspeed
    import torch

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank()
    results = {}
    for student in students:
        stage = stage_name(student)
        dumped = {k: v for k, v in student.model_dump(mode="json").items() if k not in EXECUTION_ONLY}
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
            counts = train(job, student, rd, _tokenizer_for(job, student.tokens), show_progress)
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

"""Where this process sits in a distributed job, and joining it: torchrun or the deepspeed
launcher set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; under srun they come from SLURM's variables;
alone, it is rank 0 of 1 (DeepSpeed still wants the variables, or it goes looking for MPI)."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
from typing import MutableMapping

from miniplm.logs import library_output


def _first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0].split("[")[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_distributed_env(env: MutableMapping[str, str] | None = None) -> tuple[int, int, int]:
    """Fill in RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; return (rank, world, local rank)."""
    env = os.environ if env is None else env
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault(
            "MASTER_ADDR", _first_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1")))
        )
        env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))
    env.setdefault("RANK", "0")
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(_free_port()))
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])


def init_distributed() -> int:
    """Join (or, alone, form) the process group, on this process's GPU when there is one; this
    process's rank. nccl on CUDA, gloo on the CPU: miniplm.distributed puts every collective's
    tensor where the backend serves it."""
    import torch

    _, _, local_rank = set_distributed_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before anything lands on a GPU: one GPU per process
    if not torch.distributed.is_initialized():
        with library_output():  # DeepSpeed's accelerator notice and op builds
            import deepspeed

            # DeepSpeed compiles its shared-memory all-reduce (an inference kernel miniplm never calls)
            # when a process group starts: minutes of C++ on a small machine, and a start killed during
            # the build leaves a lock file that every later start waits on, forever.
            # (`deepspeed.comm.torch` as an attribute is torch itself: the module by its full name)
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank()

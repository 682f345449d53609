"""Where this process sits in a distributed job: torchrun or the deepspeed launcher set
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; under srun they come from SLURM's variables; alone,
it is rank 0 of 1 (DeepSpeed still wants the variables, or it goes looking for MPI)."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import MutableMapping


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
        env.setdefault("MASTER_ADDR", _first_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1"))))
        env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))
    env.setdefault("RANK", "0")
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(_free_port()))
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])

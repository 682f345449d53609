"""Which worker owns which shard: a pure function of (shard index, worker index, worker count).

The worker comes from explicit flags, a SLURM array task, or torchrun ranks,
so the same stage code runs in-process, as array tasks and under torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Worker:
    """This process's place among the workers sharing a stage."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"worker index {self.index} is not in 0..{self.count - 1}")

    def owns(self, shard_index: int) -> bool:
        return shard_index % self.count == self.index

    def owned(self, n_shards: int) -> list[int]:
        return list(range(self.index, n_shards, self.count))


def resolve_worker(index: int | None = None, count: int | None = None, env: Mapping[str, str] | None = None) -> Worker:
    """Work out which worker this is: explicit flags, else a SLURM array task, else torchrun ranks.

    SLURM array ids need not start at 0 (`--array=3-7`), so the index is
    counted from SLURM_ARRAY_TASK_MIN.
    """
    env = os.environ if env is None else env
    if index is not None or count is not None:
        if index is None or count is None:
            raise ValueError("--worker and --num-workers go together")
        return Worker(index, count)
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return Worker(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
    if "RANK" in env and "WORLD_SIZE" in env:
        return Worker(int(env["RANK"]), int(env["WORLD_SIZE"]))
    return Worker()

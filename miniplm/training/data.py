"""Which rows each step trains on: a pure function of (seed, step), so a resumed run
uses exactly the rows an uninterrupted one would, and every row once per epoch.

Epoch e visits the rows in the order of a permutation seeded by (seed, e).
Step s takes the next `rows_per_step` positions of that endless sequence;
within a step, rank r takes its share, split into micro-batches.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from miniplm.corpus.tokens import TokenRows


class RowPlan:
    def __init__(self, n_rows: int, rows_per_step: int, seed: int):
        if n_rows == 0:
            raise ValueError("no rows to train on")
        self.n_rows = n_rows
        self.rows_per_step = rows_per_step
        self.seed = seed

    @lru_cache(maxsize=2)  # noqa: B019 (two epochs' orders per plan, and a run has one plan)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)

    def step_rows(self, step: int) -> np.ndarray:
        """The global batch of step `step` (0-based), as row indices."""
        positions = np.arange(step * self.rows_per_step, (step + 1) * self.rows_per_step)
        epochs, offsets = np.divmod(positions, self.n_rows)
        return np.array([self._permutation(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)

    def micro_batches(self, step: int, rank: int, world: int, micro: int) -> list[np.ndarray]:
        """This rank's micro-batches of the step: the step's rows dealt out in blocks of `micro`."""
        rows = self.step_rows(step).reshape(-1, world, micro)  # [accumulation, rank, micro]
        return [rows[a, rank] for a in range(rows.shape[0])]


def to_tensor(rows: TokenRows, indices: np.ndarray, device: str) -> torch.Tensor:
    """The rows as one int64 tensor on `device`. To a GPU it is copied from pinned memory without
    waiting: a copy from pageable memory would first wait for every queued kernel."""
    batch = torch.from_numpy(np.stack([rows[int(i)] for i in indices]).astype(np.int64))
    if device.startswith("cuda"):
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)

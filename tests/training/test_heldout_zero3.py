"""Held-out loss under ZeRO-3 with two processes and a row count they cannot split evenly: every
forward gathers the parameters from all ranks, so every rank must run the same number of
micro-batches (padded and masked), or the one with more waits for ever."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from miniplm.training.trainer import heldout_batches

SCRIPT = Path(__file__).with_name("zero3_heldout.py")


def test_every_rank_runs_the_same_micro_batches_and_together_they_cover_each_row_once():
    for n_rows in range(0, 12):
        for world in (1, 2, 3):
            for micro in (1, 2, 4):
                batches = [heldout_batches(n_rows, rank, world, micro) for rank in range(world)]
                assert len({len(b) for b in batches}) == 1 and all(len(m) == micro for b in batches for m in b)
                rows = sorted(i for b in batches for m in b for i in m if i is not None)
                assert rows == list(range(n_rows))


def test_two_processes_under_zero3_finish_with_the_plain_loss(tmp_path):
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29900 + os.getpid() % 90),
        str(SCRIPT),
        str(out),
        "5",
        "1",
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("held-out evaluation under ZeRO-3 hung: the ranks ran different numbers of forwards")
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world"] == 2 and got["loss"] == pytest.approx(got["plain"], rel=1e-5)

#!/usr/bin/env python3
"""Time the global step of `miniplm select` on synthetic scores.

    python benchmarks/select_bench.py --docs 1000000 10000000 100000000

For each size it writes score shards of 10M rows (id, source, n_tokens,
teacher_logprob, reference_logprob), then times what the global step does:
read every score shard and decide the exact top half by difference score
(ties by id), plus the token-budget and source-cap variants on the same data.
Target: 100M documents in <= 60 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from miniplm.config import SelectConfig
from miniplm.rundir import RunDir
from miniplm.selection.select import read_scores
from miniplm.selection.strategies import decide

ROWS_PER_SHARD = 10_000_000


def write_scores(root: Path, n_docs: int) -> None:
    (root / "scores").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, start in enumerate(range(0, n_docs, ROWS_PER_SHARD)):
        n = min(ROWS_PER_SHARD, n_docs - start)
        tokens = np.clip(rng.lognormal(np.log(400), 0.8, n), 1, 20000).astype(np.int64)
        teacher = -rng.gamma(4.0, 0.6, n) * tokens
        pl.DataFrame(
            {
                "id": pl.int_range(start, start + n, eager=True).cast(pl.String).str.zfill(12),
                "source": pl.Series(rng.choice(["web", "books", "code", "wiki"], n)),
                "n_tokens": tokens,
                "teacher_logprob": teacher,
                "reference_logprob": teacher - rng.normal(0.8, 0.5, n) * tokens,
            }
        ).write_parquet(root / "scores" / f"shard-{k:05d}.parquet")


def timed(label: str, fn):
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    print(
        f"{'documents':>12} {'read s':>7} {'top-50% s':>9} {'total s':>8} {'tokens s':>9} {'cap s':>6} {'peak RSS':>9}"
    )
    for n_docs in args.docs:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            rd = RunDir(tmp)
            write_scores(rd.root, n_docs)
            scores, t_read = timed("read", lambda: read_scores(rd))
            kept, t_top = timed("top", lambda: decide(scores, SelectConfig(keep_fraction=0.5), 0))
            assert kept["kept"].sum() == (n_docs + 1) // 2
            budget = int(scores["n_tokens"].sum()) // 2
            _, t_tokens = timed("tokens", lambda: decide(scores, SelectConfig(keep_tokens=budget), 0))
            _, t_cap = timed("cap", lambda: decide(scores, SelectConfig(keep_fraction=0.5, max_source_fraction=0.3), 0))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(
                f"{n_docs:>12,} {t_read:>7.1f} {t_top:>9.1f} {t_read + t_top:>8.1f} {t_tokens:>9.1f} {t_cap:>6.1f} "
                f"{peak:>7.1f}GB",
                flush=True,
            )
            scores = kept = None  # free the frames before the next size is written


if __name__ == "__main__":
    main()

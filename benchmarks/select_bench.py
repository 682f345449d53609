#!/usr/bin/env python3
"""The sharded selection against the in-memory one, on synthetic scores.

    python benchmarks/select_bench.py --units 10000000 100000000 --tasks 16

For each size it writes score shards of 500,000 rows (12-character ids, four sources, lognormal
lengths) and runs what `miniplm rank` and `miniplm select` run, each task in a process of its own,
`--parallel` at a time (the machine's cores):

- rank: task t sorts the runs t, t + tasks, ... (select.units_per_run units each);
- cut: select's global step, the cut merged from every run (one row group per run);
- decide: task t decides the units of its score shards against the cut and writes their decision
  shards (select's tasks then copy the kept documents: that part reads text and is left out);
- in memory: what select did before, every score row and `decide` in one process (skipped where it
  would not fit in the memory this machine has free).

Peak memory is each process's own (VmHWM), Python and polars included; for tasks, the largest
of them. The budget is the top half by difference score with the auto noise floor and the raw
random control, which is the paper's setting with the control its comparison needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from processes import peak_memory, run_tasks

ROWS_PER_SHARD = 500_000
BYTES_PER_UNIT_IN_MEMORY = 230  # what the in-memory decision held per unit (benchmarks/README.md)


def config():
    from miniplm.config import SelectConfig

    return SelectConfig(keep_fraction=0.5, random_baseline=True)


def write_scores(root: Path, units: int) -> None:
    (root / "scores").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, start in enumerate(range(0, units, ROWS_PER_SHARD)):
        n = min(ROWS_PER_SHARD, units - start)
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


# ------------------------------------------------------------------ what each process runs
def phase(name: str, root: Path, task: int, tasks: int) -> dict:
    from miniplm.rundir import RunDir
    from miniplm.selection import cut
    from miniplm.selection.rank import read_score_shard, runs, write_run
    from miniplm.selection.strategies import decide, random_baseline

    rd, cfg, seed = RunDir(root), config(), 0
    start = time.perf_counter()
    if name == "rank":
        rd.ranked.mkdir(exist_ok=True)
        for index, shards in enumerate(runs(rd, cfg)):
            if index % tasks == task:
                write_run(rd, index, shards, cfg, seed, cfg.random_controls)
    elif name == "cut":
        result = cut.compute(rd, cfg, seed)
        result.save(rd.cut)
    elif name == "decide":
        the_cut = cut.Cut.load(rd.cut)
        rd.decisions.mkdir(parents=True, exist_ok=True)
        for i in range(task, len(list(rd.scores.glob("shard-*.parquet"))), tasks):
            cut.apply(read_score_shard(rd.score_shard(i)), the_cut, cfg, seed).write_parquet(rd.decisions_shard(i))
    elif name == "in-memory":
        files = sorted(rd.scores.glob("shard-*.parquet"))
        scores = pl.concat([read_score_shard(f) for f in files])
        decisions = decide(scores, cfg, seed)
        decisions = decisions.with_columns(random_baseline(scores, decisions, seed))
        kept = decisions.filter("kept")
        return {"seconds": time.perf_counter() - start, "peak": peak_memory(), "kept": kept.height}
    return {"seconds": time.perf_counter() - start, "peak": peak_memory()}


def tasks_of(name: str, root: Path, tasks: int, parallel: int) -> tuple[float, list[dict]]:
    """Every task of a phase, `parallel` at a time: (wall seconds, each task's figures)."""
    command = [sys.executable, __file__, "--phase", name, "--root", str(root), "--tasks", str(tasks)]
    return run_tasks([[*command, "--task", str(t)] for t in range(tasks)], parallel)


def _available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(units: int, tasks: int, parallel: int, workdir: Path | None) -> dict:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        write_scores(root, units)
        row = {"units": units}
        for name in ("rank", "cut", "decide"):
            count = 1 if name == "cut" else tasks
            wall, results = tasks_of(name, root, count, parallel)
            row[name] = {"wall": wall, "peak": max(r["peak"] for r in results)}
        cut = json.loads((root / "selection" / "cut.json").read_text())
        row["kept"] = cut["kept_units"]
        row["runs"] = len(list((root / "ranked").glob("run-*.json")))
        if units * BYTES_PER_UNIT_IN_MEMORY < 0.8 * _available():
            wall, [result] = tasks_of("in-memory", root, 1, 1)
            row["in-memory"] = {"wall": wall, "peak": result["peak"]}
            assert result["kept"] == row["kept"], (result["kept"], row["kept"])  # the same selection
        return row


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--task", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.root, args.task, args.tasks)))
        return

    print(
        f"{'units':>12} {'runs':>5} | {'rank s':>7} {'task peak':>10} | {'cut s':>7} {'cut peak':>9} | "
        f"{'decide s':>8} {'task peak':>10} | {'total s':>8} | {'in-memory s':>11} {'peak':>9}"
    )
    rows = []
    for units in args.units:
        r = measure(units, args.tasks, args.parallel, args.workdir)
        rows.append(r)
        total = r["rank"]["wall"] + r["cut"]["wall"] + r["decide"]["wall"]
        memory = r.get("in-memory")
        old = f"{memory['wall']:>11.1f} {_gb(memory['peak']):>9}" if memory else f"{'(no room)':>11} {'':>9}"
        print(
            f"{units:>12,} {r['runs']:>5} | {r['rank']['wall']:>7.1f} {_gb(r['rank']['peak']):>10} | "
            f"{r['cut']['wall']:>7.1f} {_gb(r['cut']['peak']):>9} | {r['decide']['wall']:>8.1f} "
            f"{_gb(r['decide']['peak']):>10} | {total:>8.1f} | {old}",
            flush=True,
        )
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        per_run = (large["cut"]["peak"] - small["cut"]["peak"]) / max(large["runs"] - small["runs"], 1)
        runs_1b = large["runs"] * 1_000_000_000 / large["units"]
        cut_1b = large["cut"]["peak"] + per_run * (runs_1b - large["runs"])
        scale = 1_000_000_000 / large["units"]
        print(
            f"projected to 1,000,000,000 units ({runs_1b:,.0f} runs): rank and decide tasks "
            f"{_gb(max(large['rank']['peak'], large['decide']['peak']))} each (one run or one shard at a time), "
            f"the cut {_gb(cut_1b)} ({_gb(per_run)} per run) and about {large['cut']['wall'] * scale / 60:,.0f} "
            f"min; rank and decide {(large['rank']['wall'] + large['decide']['wall']) * scale / 3600:,.1f} "
            f"hours of {args.parallel} cores' work"
        )


if __name__ == "__main__":
    main()

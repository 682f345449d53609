#!/usr/bin/env python3
"""Prepare's partitioned dedup: per-task memory and time on synthetic keys, at several corpus sizes.

    python benchmarks/dedup_bench.py --documents 2500000 5000000 10000000 --per-partition 1250000

For each size it writes input units of 500,000 documents' keys as prepare's step 1 leaves them
(a 16-byte text hash, a 12-character id and FineWeb's 14 MinHash bands of 64 bits each), with 1%
exact duplicates, 0.5% repeated ids and 1% near-copies (one band shared with an earlier document)
planted, then runs what prepare runs, each task in a process of its own, `--parallel` at a time:

- keys: one input unit's keys written into partitions (step 1's extra work, per unit);
- phase 1: per partition, exact duplicates and ids held twice;
- phase 2: per partition, documents sharing a band value (one band at a time);
- end: the answers joined: repeated ids, then groups of near-copies.

Partitions are documents / --per-partition: a task's keys stay the same size as the corpus grows.
`--one-partition` adds a run with a single partition at the largest size, for comparison.
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
import pyarrow as pa
import pyarrow.parquet as pq
from processes import peak_memory, run_tasks

UNIT = 500_000
BANDS = 14


def write_units(root: Path, documents: int) -> list[int]:
    """Part files of synthetic keys; the documents of each unit."""
    rng = np.random.default_rng(0)
    rows = []
    for u, start in enumerate(range(0, documents, UNIT)):
        n = min(UNIT, documents - start)
        text = rng.integers(0, 2**63, (n, 2), dtype=np.int64).view(np.uint64)
        bands = rng.integers(0, 2**63, (n, BANDS), dtype=np.int64).view(np.uint64)
        ids = np.char.zfill(np.arange(start, start + n).astype(str), 12).astype(object)
        if start:  # plant copies of documents of this unit's first half in its second half
            k = n // 2
            exact = rng.choice(np.arange(k, n), n // 100, replace=False)
            text[exact], bands[exact] = text[exact - k], bands[exact - k]
            near = rng.choice(np.setdiff1d(np.arange(k, n), exact), n // 100, replace=False)
            b = rng.integers(0, BANDS, len(near))
            bands[near, b] = bands[near - k, b]
            repeated = rng.choice(np.setdiff1d(np.arange(k, n), np.r_[exact, near]), n // 200, replace=False)
            ids[repeated] = ids[repeated - k]
        table = {
            "text_hash": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(text.tobytes())]),
            "id": pa.array(ids.tolist(), pa.string()),
            **{f"_band_{b:02d}": bands[:, b] for b in range(BANDS)},
        }
        pq.write_table(pa.table(table), root / f"part-{u:05d}.parquet")
        rows.append(n)
    return rows


def plan(root: Path, rows: list[int], partitions: int):
    from miniplm.corpus import dedup

    return dedup.Plan(root, tuple(f"part-{u:05d}" for u in range(len(rows))), tuple(rows), partitions, BANDS)


def phase(name: str, root: Path, rows: list[int], partitions: int, task: int) -> dict:
    from miniplm.corpus import dedup

    p = plan(root, rows, partitions)
    start = time.perf_counter()
    out: dict = {}
    if name == "keys":
        unit = f"part-{task:05d}"
        dedup.write_keys(root / f"{unit}.parquet", lambda kind: p.keys(unit, kind), dedup_bands(), partitions)
    elif name == "phase 1":
        p.folder.mkdir(exist_ok=True)
        dedup.ANSWER["exact"](p, task)
        dedup.ANSWER["ids"](p, task)
    elif name == "phase 2":
        dedup.ANSWER["near"](p, task)
    elif name == "end":
        d = dedup.decide(p)
        out = {"exact": int(np.unpackbits(d.exact).sum()), "repeated": len(d.repeated), "near": len(d.near)}
    return {"seconds": time.perf_counter() - start, "peak": peak_memory(), **out}


def dedup_bands() -> list[str]:
    return [f"_band_{b:02d}" for b in range(BANDS)]


def tasks_of(name: str, root: Path, rows: list[int], partitions: int, tasks: int, parallel: int):
    command = [sys.executable, __file__, "--phase", name, "--root", str(root)]
    command += ["--rows", json.dumps(rows), "--partitions", str(partitions)]
    return run_tasks([[*command, "--task", str(t)] for t in range(tasks)], parallel)


def measure(documents: int, partitions: int, parallel: int, workdir: Path | None) -> dict:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        rows = write_units(root, documents)
        row = {"documents": documents, "partitions": partitions}
        for name, tasks in (("keys", len(rows)), ("phase 1", partitions), ("phase 2", partitions), ("end", 1)):
            wall, results = tasks_of(name, root, rows, partitions, tasks, parallel)
            row[name] = {"wall": wall, "peak": max(r["peak"] for r in results)}
            if name == "end":
                row["found"] = {k: results[0][k] for k in ("exact", "repeated", "near")}
        row["scratch"] = sum(f.stat().st_size for f in root.glob("*.*.parquet")) / documents
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, nargs="+", default=[2_500_000, 5_000_000, 10_000_000])
    parser.add_argument("--per-partition", type=int, default=1_250_000)
    parser.add_argument("--one-partition", action="store_true")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--task", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--partitions", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.root, json.loads(args.rows), args.partitions, args.task)))
        return

    gb = lambda n: f"{n / 2**30:.2f} GB"  # noqa: E731
    print(
        f"{'documents':>11} {'parts':>5} | {'keys s':>6} {'peak':>8} | {'phase 1 s':>9} {'peak':>8} | "
        f"{'phase 2 s':>9} {'peak':>8} | {'end s':>6} {'peak':>8} | {'scratch B/doc':>13} | found (exact, ids, near)"
    )
    sizes = [(n, -(-n // args.per_partition)) for n in args.documents]
    if args.one_partition:
        sizes.append((args.documents[-1], 1))
    for documents, partitions in sizes:
        r = measure(documents, partitions, args.parallel, args.workdir)
        f = r["found"]
        print(
            f"{documents:>11,} {partitions:>5} | {r['keys']['wall']:>6.1f} {gb(r['keys']['peak']):>8} | "
            f"{r['phase 1']['wall']:>9.1f} {gb(r['phase 1']['peak']):>8} | {r['phase 2']['wall']:>9.1f} "
            f"{gb(r['phase 2']['peak']):>8} | {r['end']['wall']:>6.1f} {gb(r['end']['peak']):>8} | "
            f"{r['scratch']:>13.0f} | {f['exact']:,}, {f['repeated']:,}, {f['near']:,}",
            flush=True,
        )


if __name__ == "__main__":
    main()

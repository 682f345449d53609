#!/usr/bin/env python3
"""Throughput and peak memory of `miniplm prepare` on large JSONL inputs.

    python benchmarks/prepare_bench.py --sizes-mb 256 1024
    python benchmarks/prepare_bench.py --sizes-mb 16 64 --filters default none

For each size it writes one web-like JSONL file (lognormal document lengths,
median ~2,000 characters, 1% exact duplicates), runs `miniplm prepare` on it
in a subprocess, and samples the resident memory of the whole process tree
every 50 ms. Flat memory means the peak does not grow with the input size.
CPU seconds count every process of the run (a steadier figure than wall time
on a shared machine).
`--filters` picks the noise filters: `default` (quality rules and
near-duplicates, as a job gets them), `near-duplicates` (only those) or
`none`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her one all we can their has there been if more when will would who so no data model "
    "training corpus language token teacher student reference score sample text web page"
).split()


FILTERS = {"default": {}, "near-duplicates": {"quality": None}, "none": {"quality": None, "near_duplicates": None}}


def write_corpus(path: Path, target_bytes: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) + "." for _ in range(4000)]
    written = docs = 0
    recent: list[str] = []
    with open(path, "w", encoding="utf-8") as f:
        while written < target_bytes:
            if recent and rng.random() < 0.01:
                text = rng.choice(recent)
            else:
                length = min(int(rng.lognormvariate(7.6, 1.0)), 200_000)  # median e^7.6 ~ 2,000 chars
                parts, n = [f"Document {docs}."], 0
                while n < length:
                    parts.append(rng.choice(paragraphs))
                    n += len(parts[-1])
                text = "\n\n".join(parts)
                recent = (recent + [text])[-100:]
            line = json.dumps({"text": text, "url": f"https://example.org/{docs}"}) + "\n"
            f.write(line)
            written += len(line)
            docs += 1
    return docs


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_prepare(job_path: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (every process of the run) and peak resident memory."""
    start, cpu = time.perf_counter(), children_cpu_seconds()
    proc = subprocess.Popen(
        [sys.executable, "-m", "miniplm", "prepare", str(job_path), "-q"], stdout=subprocess.DEVNULL
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        time.sleep(0.05)
    if proc.returncode:
        sys.exit(f"prepare failed with exit code {proc.returncode}")
    return time.perf_counter() - start, children_cpu_seconds() - cpu, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[256, 1024])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to write inputs and runs (default: a temp dir)"
    )
    parser.add_argument("--filters", nargs="+", default=["default"], choices=list(FILTERS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        print(
            f"{'input':>10} {'filters':>16} {'documents':>10} {'seconds':>8} {'docs/s':>8} {'MB/s':>6} "
            f"{'CPU s':>7} {'MB/CPU s':>8} {'peak RSS':>9}"
        )
        for size_mb in args.sizes_mb:
            data = tmp / f"web-{size_mb}mb.jsonl"
            n_docs = write_corpus(data, size_mb << 20)
            for filters in args.filters:
                run_dir = tmp / f"run-{size_mb}-{filters}"
                job = {
                    "run_dir": str(run_dir),
                    "corpus": {
                        "inputs": [{"path": str(data), "format": "jsonl", "metadata_fields": ["url"]}],
                        **FILTERS[filters],
                    },
                }
                job_path = tmp / f"job-{size_mb}-{filters}.yaml"
                job_path.write_text(yaml.safe_dump(job))
                seconds, cpu, peak = run_prepare(job_path)
                stats = json.loads((run_dir / "docs" / "stats.json").read_text())
                assert stats["documents_read"] == n_docs, (stats["documents_read"], n_docs)
                print(
                    f"{size_mb:>8}MB {filters:>16} {n_docs:>10,} {seconds:>8.1f} {n_docs / seconds:>8,.0f} "
                    f"{size_mb / seconds:>6.1f} {cpu:>7.1f} {size_mb / cpu:>8.2f} {peak / 2**20:>7,.0f}MB",
                    flush=True,
                )
            data.unlink()


if __name__ == "__main__":
    main()

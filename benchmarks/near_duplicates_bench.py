#!/usr/bin/env python3
"""Time and memory of prepare's near-duplicate decision (the global step), per document.

    python benchmarks/near_duplicates_bench.py --docs 1000000 10000000

Synthetic band columns (14 bands of 64-bit hashes, the default shape), one band made
at a time as prepare reads one band column at a time from the parts; 1% of the documents are
near-copies of an earlier one (they share one to all bands with it). Prints seconds, the peak
resident memory above the process's baseline and that peak per document, and checks that the
planted copies are the ones found. Each size runs in a process of its own.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np

from miniplm.corpus.near_duplicates import near_copies

BANDS = 14


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(copies, originals): 1% of rows copy an earlier row."""
    rng = np.random.default_rng(seed)
    copies = np.unique(rng.integers(1, n, n // 100))
    originals = (rng.random(len(copies)) * copies).astype(np.int64)  # an earlier row
    keep = ~np.isin(originals, copies)  # a copy of a copy would be found as its original's copy
    return copies[keep], originals[keep]


def band_reader(n: int, copies: np.ndarray, originals: np.ndarray, seed: int = 0):
    shared = np.random.default_rng(seed + 1).integers(1, 2**BANDS, len(copies))  # which bands each copy shares

    def read(name: str) -> np.ndarray:
        i = int(name)
        band = np.random.default_rng(seed + 100 + i).integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
        same = (shared >> i) & 1 == 1
        band[copies[same]] = band[originals[same]]
        return band

    return read


def measure(n: int) -> None:
    copies, originals = planted(n)
    read = band_reader(n, copies, originals)
    base = rss_bytes()
    start = time.perf_counter()
    found = near_copies(read, [str(i) for i in range(BANDS)], np.ones(n, dtype=bool))
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes() - base
    assert np.array_equal(np.flatnonzero(found >= 0), np.sort(copies))
    assert np.array_equal(found[copies], originals)
    print(f"{n:>12,} {seconds:>8.1f} {peak / 2**20:>17,.0f} MB {peak / n:>10.0f} {len(copies):>13,}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single size, in this process
    args = parser.parse_args()
    if args.one:
        return measure(args.one)
    print(
        f"{'documents':>12} {'seconds':>8} {'peak RSS above base':>20} {'bytes/doc':>10} {'copies found':>13}",
        flush=True,
    )
    for n in args.docs:
        subprocess.run([sys.executable, __file__, "--one", str(n)], check=True)


if __name__ == "__main__":
    main()

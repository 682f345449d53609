#!/usr/bin/env python3
"""Time the content fingerprint of a big input: the first time (every byte read and hashed) and
once it is remembered (a `stat` and a small cache file).

    python benchmarks/fingerprint_bench.py --sizes-gb 1
    python benchmarks/fingerprint_bench.py --sizes-gb 1 --dir /scratch/me --drop-caches   # cold, as root

The file is written once with random bytes. Without --drop-caches the first
pass reads it from the page cache (it was just written), so it measures the
hash and the copy out of memory; with it (root only) from the disk.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

CHUNK = 64 << 20


def write_file(path: Path, size: int) -> None:
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, CHUNK)])
            left -= CHUNK
    then = time.time() - 60  # older than the cache's "written just now" window
    os.utime(path, (then, then))


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0])
    parser.add_argument("--dir", default=None, help="where to write the test file (default: a temporary folder)")
    parser.add_argument("--cached-repeats", type=int, default=1000)
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache first (needs root)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        os.environ["MINIPLM_CACHE"] = str(Path(tmp) / "cache")  # a cold cache, not the user's
        from miniplm import fingerprints

        print("| input | first time s | GB/s | remembered ms | first / remembered |")
        print("|---|---|---|---|---|")
        for gb in args.sizes_gb:
            path = Path(tmp) / f"input-{gb:g}GB.bin"
            size = int(gb * (1 << 30))
            write_file(path, size)
            if args.drop_caches:
                drop_page_cache()
            start = time.perf_counter()
            first = fingerprints.fingerprint(path)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(args.cached_repeats):
                assert fingerprints.fingerprint(path) == first
            warm = (time.perf_counter() - start) / args.cached_repeats
            print(f"| {gb:g} GB | {cold:.2f} | {size / cold / 1e9:.2f} | {warm * 1e3:.3f} | {cold / warm:,.0f}x |")
            path.unlink()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Export speed: tokens per second per core for each format, from a token set (no tokenizing) and
from text (tokenizing with the bundled teacher's tokenizer, SmolLM2's 49,152 ids).

    python benchmarks/export_bench.py [--copies 4] [--run-dir DIR]

The bundled corpus (every document, repeated `--copies` times with distinct text so that there is
enough to time; the quality and near-duplicate filters off) is prepared once and packed into a
token set of 1,025-token rows; then each format exports the main split from its text and the token
set as it is, through the export stage itself (`miniplm export`'s code path: one worker, one
thread), its provenance included. Each figure is the export's tokens over its wall time, the best
of `--repeats` runs.
"""

from __future__ import annotations

import os

for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # one core: the figures are per core
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import miniplm.stages  # noqa: E402, F401  (the registry)
from miniplm.corpus import prepare, tokenize  # noqa: E402
from miniplm.export import export  # noqa: E402
from miniplm.job import load_job  # noqa: E402

FORMATS = ("megatron", "olmo-npy", "litdata", "mds")


def corpus(folder: Path, copies: int) -> Path:
    frame = pl.concat([pl.read_parquet(p) for p in sorted((REPO / "data" / "sample").glob("*.parquet"))])
    # each copy's text made distinct, or prepare's exact dedup would keep one of each
    frame = pl.concat([frame.with_columns(pl.col("id") + f"-{k}", pl.col("text") + f"\n\n{k}") for k in range(copies)])
    path = folder / "corpus.parquet"
    frame.write_parquet(path)
    return path


def job_file(folder: Path, data: Path) -> Path:
    exports = [{"name": f"{f}-text", "from": "main", "format": f} for f in FORMATS]
    exports += [{"name": f"{f}-tokens", "from": "tokens/rows", "format": f} for f in FORMATS]
    job = {
        "run_dir": str(folder / "run"),
        "corpus": {
            "inputs": [{"path": str(data), "format": "parquet", "source_field": "source"}],
            "docs_per_shard": 2000,
            "reference_fraction": 0.0,
            "heldout_fraction": 0.0,
            "quality": None,
            "near_duplicates": None,
        },
        "teacher": {"model": "smollm2-135m"},
        "tokenize": [{"name": "rows", "input": "main", "seq_len": 1024}],
        "export": exports,
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="times the bundled corpus is repeated")
    parser.add_argument("--repeats", type=int, default=2, help="runs per export; the best is kept")
    parser.add_argument("--run-dir", type=Path, default=None, help="where to work (default: a temporary folder)")
    args = parser.parse_args()
    folder = args.run_dir or Path(tempfile.mkdtemp(prefix="export-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    job = load_job(job_file(folder, corpus(folder, args.copies)))
    prepare.STAGE.run(job, show_progress=False)
    tokenize.STAGE.run(job, show_progress=False)

    print(f"export speed, one worker on one core ({os.cpu_count()} cores here), best of {args.repeats}")
    print(f"{'format':10s} {'from':7s} {'sequences':>10s} {'tokens':>11s} {'seconds':>8s} {'tokens/s':>11s}")
    for fmt in FORMATS:
        for source in ("tokens", "text"):
            name = f"{fmt}-{source}"
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                counts = export.STAGE.run(job, only=name, force=True, show_progress=False)[f"export/{name}"]
                best = min(best, time.perf_counter() - start)
            print(
                f"{fmt:10s} {source:7s} {counts['sequences']:>10,} {counts['tokens']:>11,} {best:>8.2f} "
                f"{counts['tokens'] / best:>11,.0f}"
            )


if __name__ == "__main__":
    main()

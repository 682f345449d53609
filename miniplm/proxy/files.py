"""Where the proxy stage keeps what it writes under RUN_DIR/proxy/."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from miniplm import outputs
from miniplm.rundir import RunDir, shard_name

NAME = "proxy"
STATS_KEY = b"miniplm.proxy"  # a proxy score shard's metadata: what predicting it did and cost


def folder(rd: RunDir) -> Path:
    return rd.root / NAME


def model_folder(rd: RunDir) -> Path:
    return folder(rd) / "model"


def holdout(rd: RunDir) -> Path:
    """The held-out sample units' LM and proxy scores."""
    return folder(rd) / "holdout.parquet"


def fit_record(rd: RunDir) -> Path:
    return folder(rd) / "fit.json"


def scores_shard(rd: RunDir, index: int) -> Path:
    return rd.root / outputs.PROXY_SCORES / shard_name(index, ".parquet")


def cpu_seconds(rd: RunDir, key: str) -> Path:
    """How long a part of the work (`fit`, a shard) took: kept in the stage's scratch until it finishes,
    not in its outputs, which an interrupted and an uninterrupted run write to the same bytes."""
    return rd.work(NAME) / "cpu-seconds" / f"{key}.json"


def shard_stats(path: Path) -> dict:
    """What predicting a proxy score shard did and cost."""
    return json.loads(pq.read_schema(path).metadata[STATS_KEY])

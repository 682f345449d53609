"""Where each row of a token set comes from, so that a training row (or an exported sequence) can be
traced to its text.

Beside each token shard `shard-NNNNN.arrow`, `shard-NNNNN.sources.parquet` holds one row per token
row, in the same order: the ids of the documents the row holds and, for each, the token range it
takes (`token_starts`, `token_ends`), counted in the document's tokens as the token set's tokenizer
gives them, with its EOS as token len(doc), the convention of scored instances. The row is exactly
those ranges, joined in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from miniplm.files import atomic_path

SCHEMA = pa.schema(
    [
        ("source_ids", pa.list_(pa.string())),
        ("token_starts", pa.list_(pa.int64())),
        ("token_ends", pa.list_(pa.int64())),
    ]
)


def sources_file(shard: Path) -> Path:
    """The sources of the token shard `shard` (an .arrow file)."""
    return shard.with_name(shard.name.removesuffix(".arrow") + ".sources.parquet")


def packed_sources(ids: Sequence[str], lengths: Sequence[int], width: int, rows: int) -> pa.Table:
    """The sources of the first `rows` rows of `width` tokens cut from documents of `lengths` tokens
    (each with its EOS) joined in order, before any shuffle."""
    starts = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for r in range(rows):
        lo, hi = r * width, (r + 1) * width
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        last = int(np.searchsorted(starts, hi, side="left"))  # the documents first..last-1 overlap the row
        docs = range(first, last)
        columns["source_ids"].append([ids[d] for d in docs])
        columns["token_starts"].append([int(max(lo, starts[d]) - starts[d]) for d in docs])
        columns["token_ends"].append([int(min(hi, starts[d + 1]) - starts[d]) for d in docs])
    return pa.table(columns, schema=SCHEMA)


def instance_sources(pieces: Sequence[Sequence[dict[str, Any]]]) -> pa.Table:
    """The sources of scored instances, from the pieces each holds (scoring/instances.py)."""
    return pa.table(
        {
            "source_ids": [[p["id"] for p in held] for held in pieces],
            "token_starts": [[p["start"] for p in held] for held in pieces],
            "token_ends": [[p["end"] for p in held] for held in pieces],
        },
        schema=SCHEMA,
    )


def write_sources(shard: Path, table: pa.Table) -> None:
    with atomic_path(sources_file(shard)) as tmp:
        pq.write_table(table, tmp)


def read_sources(shard: Path) -> pa.Table | None:
    """The sources of one token shard; None for a shard written without them."""
    path = sources_file(shard)
    return pq.read_table(path) if path.exists() else None


def token_set_sources(folder: Path) -> pa.Table | None:
    """The sources of every row of a token set, in row order (TokenRows'); None if a shard has none."""
    tables = [read_sources(f) for f in sorted(folder.glob("shard-*.arrow"))]
    if any(t is None for t in tables):
        return None
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

"""The provenance sidecar of an export: for every sequence it wrote, one Parquet row with its place
in the output (file, index there, tokens before it, length) and its sources (document ids and the
token range of each; the sequence is those ranges joined in order), so that a training sample can be
traced back to its text. `provenance/shard-NNNNN.parquet`, one per shard, in the order written."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from miniplm.corpus.row_sources import SCHEMA as SOURCES
from miniplm.export.formats import Placed
from miniplm.files import atomic_path
from miniplm.rundir import shard_name

FOLDER = "provenance"
SCHEMA = pa.schema(
    [("file", pa.string()), ("item", pa.int64()), ("offset", pa.int64()), ("length", pa.int64()), *SOURCES]
)


def write(out: Path, shard: int, placed: list[Placed], lengths: list[int], sources: pa.Table) -> None:
    place = {
        "file": [p.file for p in placed],
        "item": [p.item for p in placed],
        "offset": [p.offset for p in placed],
        "length": lengths,
    }
    table = pa.Table.from_arrays(
        [*(pa.array(v, SCHEMA.field(k).type) for k, v in place.items()), *sources.select(SOURCES.names).columns],
        schema=SCHEMA,
    )
    with atomic_path(out / FOLDER / shard_name(shard, ".parquet")) as tmp:
        pq.write_table(table, tmp)


def read(out: Path) -> pa.Table:
    """Every sequence's row, in shard order."""
    files = sorted((out / FOLDER).glob("shard-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else SCHEMA.empty_table()

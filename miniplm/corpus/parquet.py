"""Parquet in bounded memory: reading a file batch by batch, and writing a stream of
rows as numbered shards of a fixed number of rows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

# Read column chunks through a buffer of this size: without one, pyarrow holds a
# whole compressed row group (gigabytes in some files) before the first row.
READ_BUFFER_BYTES = 1 << 20
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3)
ROW_GROUP_ROWS = 1000
ROW_GROUP_BYTES = 64 << 20  # long documents: flush by size before 1000 rows pile up


def iter_batches(pf: pq.ParquetFile, batch_size: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The file's rows in order, one row group at a time.

    `ParquetFile.iter_batches` over a whole file reads ahead without bound
    (pyarrow 26 held a 250 MB file in memory while yielding 1,024-row
    batches); asking for one row group at a time keeps memory to a row group.
    """
    for i in range(pf.num_row_groups):
        yield from pf.iter_batches(batch_size=batch_size, row_groups=[i], columns=columns)


class ShardWriter:
    """Appends tables to `path_of(0)`, `path_of(1)`, ... with `rows_per_shard` rows each
    (the last may hold fewer). Each shard is written under a temporary name and
    renamed only once it is complete."""

    def __init__(self, schema: pa.Schema, path_of: Callable[[int], Path], rows_per_shard: int):
        self.schema = schema
        self.path_of = path_of
        self.rows_per_shard = rows_per_shard
        self.shards_written = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._rows = 0  # in the current shard, buffered rows included
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._buffered_bytes = 0

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        while table.num_rows:
            take = min(self.rows_per_shard - self._rows, table.num_rows)
            self._buffer.append(table.slice(0, take))
            self._buffered += take
            self._buffered_bytes += self._buffer[-1].nbytes
            self._rows += take
            table = table.slice(take)
            shard_full = self._rows == self.rows_per_shard
            if self._buffered >= ROW_GROUP_ROWS or self._buffered_bytes >= ROW_GROUP_BYTES or shard_full:
                self._flush()
            if shard_full:
                self._close_shard()

    def close(self) -> None:
        if self._buffer:
            self._flush()
        if self._rows:
            self._close_shard()

    def _flush(self) -> None:
        """Write what is buffered as one row group (small appends would make tiny ones)."""
        if self._writer is None:
            final = self.path_of(self.shards_written)
            final.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = final.with_name(f".{final.name}.tmp")
            self._writer = pq.ParquetWriter(self._tmp, self.schema, **PARQUET_OPTIONS)
        self._writer.write_table(pa.concat_tables(self._buffer), row_group_size=ROW_GROUP_ROWS)
        self._buffer, self._buffered, self._buffered_bytes = [], 0, 0

    def _close_shard(self) -> None:
        assert self._writer is not None and self._tmp is not None
        self._writer.close()
        os.replace(self._tmp, self.path_of(self.shards_written))
        self.shards_written += 1
        self._writer, self._tmp, self._rows = None, None, 0

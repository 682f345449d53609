"""The sequences an export writes, each with where it comes from (corpus/row_sources.py's columns).

From documents: each document's tokens followed by EOS, as Megatron's preprocessing appends it
(`--append-eod`) and as miniplm's own token sets join documents; the source is the whole document.
From selected instances: each instance's tokens as scoring cut them, with the pieces it holds.
From a token set: each row as it is (less the padding of instance rows, which no trainer reads),
with the sources tokenize recorded beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from miniplm.corpus.instance_rows import PAD
from miniplm.corpus.parquet import READ_BUFFER_BYTES, iter_batches
from miniplm.corpus.row_sources import SCHEMA as SOURCES
from miniplm.corpus.row_sources import instance_sources, read_sources
from miniplm.corpus.tokens import row_blocks
from miniplm.models.text_tokens import token_ids

SCHEMA = pa.schema([("tokens", pa.list_(pa.int32())), *SOURCES])
BATCH = 1024


def _table(tokens: list, sources: pa.Table) -> pa.Table:
    return pa.Table.from_arrays([pa.array(tokens, pa.list_(pa.int32())), *sources.columns], schema=SCHEMA)


def document_batches(path: Path, tokenizer, eos: int, skip: int = 0) -> Iterator[pa.Table]:
    """The documents of one shard, a batch at a time, from batch `skip` on (those before are done)."""
    pf = pq.ParquetFile(path, buffer_size=READ_BUFFER_BYTES)
    for i, batch in enumerate(iter_batches(pf, BATCH, ["id", "text"])):
        if i < skip:
            continue
        tokens = [t + [eos] for t in token_ids(tokenizer, batch.column("text").to_pylist())]
        ids = batch.column("id").to_pylist()
        sources = pa.table(
            {
                "source_ids": [[d] for d in ids],
                "token_starts": [[0] for _ in ids],
                "token_ends": [[len(t)] for t in tokens],
            },
            schema=SOURCES,
        )
        yield _table(tokens, sources)


def instances(path: Path) -> pa.Table:
    """The selected instances of one shard."""
    table = pq.read_table(path, columns=["input_ids", "docs"])
    return _table(table["input_ids"].to_pylist(), instance_sources(table["docs"].to_pylist()))


def token_rows(shard: Path) -> pa.Table:
    """The rows of one token shard; sources null where tokenize could not name them."""
    rows = [r[r != PAD] for block in row_blocks(shard) for r in block]
    sources = read_sources(shard)
    if sources is None:
        sources = pa.table(
            {name: pa.nulls(len(rows), SOURCES.field(name).type) for name in SOURCES.names}, schema=SOURCES
        )
    return _table([r.tolist() for r in rows], sources)


def arrays(table: pa.Table) -> list[np.ndarray]:
    """Each sequence's tokens as an int64 array."""
    column = table["tokens"].combine_chunks()
    values = column.values.to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = column.offsets.to_numpy()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(column))]

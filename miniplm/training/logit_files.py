"""Stored teacher log-probs: Arrow IPC files aligned row for row with a token set's shards,
memory-mapped when read.

Row r of `teacher-logits/NAME/shard-NNNNN.arrow` belongs to row r of
`tokens/TOKENS/shard-NNNNN.arrow`; it holds, for each of the row's seq_len
predicted positions, the teacher's top-k token ids (uint16 when the vocabulary
fits, else int32), their log-probs, and the log of the mass left to the other
tokens (float16 or float32). At k = 32 with float16 and a vocabulary under
65,536 that is 32 x (2 + 2) + 2 = 130 bytes per token.

Files are written in record batches of BATCH_ROWS rows whatever pieces the
rows arrive in, so a shard computed in one go and one resumed after a kill
are the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from miniplm.corpus.tokens import list_blocks
from miniplm.files import atomic_path

BATCH_ROWS = 64
COLUMNS = ("ids", "logprobs", "rest")
METADATA_KEY = b"miniplm.teacher_logits"


@dataclass(frozen=True)
class LogitsLayout:
    """What a set's files hold: rows of seq_len positions, top_k tokens each, over `vocab`
    tokens, log-probs of softmax(logits / temperature) stored as `logprob_dtype`."""

    seq_len: int
    top_k: int
    vocab: int
    temperature: float
    logprob_dtype: str = "float16"

    @property
    def id_dtype(self) -> np.dtype:
        return np.dtype(np.uint16) if self.vocab <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)

    def schema(self) -> pa.Schema:
        width, value = self.seq_len * self.top_k, pa.from_numpy_dtype(np.dtype(self.logprob_dtype))
        return pa.schema(
            [
                ("ids", pa.list_(pa.from_numpy_dtype(self.id_dtype), width)),
                ("logprobs", pa.list_(value, width)),
                ("rest", pa.list_(value, self.seq_len)),
            ],
            metadata={METADATA_KEY: json.dumps(asdict(self)).encode()},
        )

    def table(self, ids: np.ndarray, logp: np.ndarray, rest: np.ndarray) -> pa.Table:
        """Rows from ids and log-probs [rows, seq_len, k] and the remaining mass [rows, seq_len]."""
        values = (ids.astype(self.id_dtype), logp.astype(self.logprob_dtype), rest.astype(self.logprob_dtype))
        return _table(self.schema(), [pa.array(np.ascontiguousarray(v).ravel()) for v in values])


def _table(schema: pa.Schema, flat: list[pa.Array]) -> pa.Table:
    """A table of the schema from each column's flat values (list items named as the schema names them)."""
    columns = [pa.FixedSizeListArray.from_arrays(v, type=f.type) for v, f in zip(flat, schema)]
    return pa.Table.from_arrays(columns, schema=schema)


def write_logits(path: Path, layout: LogitsLayout, tables: Iterable[pa.Table]) -> int:
    """Write a shard's rows, arriving in order as tables of any size, as one file that appears
    complete or not at all; its size in bytes. Holds one record batch of rows at a time."""
    schema = layout.schema()
    with atomic_path(path) as tmp, ipc.new_file(str(tmp), schema) as writer:

        def emit(rows: pa.Table) -> None:
            # rebuilt from the values: tables read back from Parquet checkpoints name list items otherwise
            writer.write_table(_table(schema, [rows[name].combine_chunks().flatten() for name in COLUMNS]))

        pending = pa.Table.from_batches([], schema)
        for table in tables:
            pending = pa.concat_tables([pending, table.cast(schema)])
            whole = pending.num_rows - pending.num_rows % BATCH_ROWS
            for start in range(0, whole, BATCH_ROWS):
                emit(pending.slice(start, BATCH_ROWS))
            pending = pending.slice(whole)
        if pending.num_rows:
            emit(pending)
    return path.stat().st_size


def count_rows(path: Path) -> int:
    """The rows a shard file holds (read from its record batches' headers, memory-mapped)."""
    with pa.memory_map(str(path)) as source:
        reader = ipc.open_file(source)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


class TeacherLogitRows:
    """Every row of a teacher_logits set's shards, in shard order, memory-mapped, indexed like the
    token set's rows (miniplm.corpus.tokens.TokenRows)."""

    def __init__(self, folder: str | Path):
        self.files = sorted(Path(folder).glob("shard-*.arrow"))
        if not self.files:
            raise FileNotFoundError(f"{folder}: no teacher-logits shards")
        self._blocks: list[dict[str, np.ndarray]] = []
        layouts = set()
        for f in self.files:
            table = ipc.open_file(pa.memory_map(str(f))).read_all()
            layouts.add(LogitsLayout(**json.loads(table.schema.metadata[METADATA_KEY])))
            blocks = {name: list_blocks(table[name]) for name in COLUMNS}
            self._blocks += [dict(zip(COLUMNS, parts)) for parts in zip(*blocks.values())]
        if len(layouts) > 1:
            raise ValueError(f"{folder}: shards written with different settings: {sorted(map(str, layouts))}")
        self.layout = layouts.pop()
        self._offsets = np.cumsum([0] + [len(b["ids"]) for b in self._blocks])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids and log-probs [seq_len, k] and the remaining mass [seq_len] of row i (views, no copy)."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        b = int(np.searchsorted(self._offsets, i, side="right") - 1)
        block, r = self._blocks[b], i - self._offsets[b]
        shape = (self.layout.seq_len, self.layout.top_k)
        return block["ids"][r].reshape(shape), block["logprobs"][r].reshape(shape), block["rest"][r]

    def batch(self, indices: np.ndarray, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows at `indices`, flattened to positions: ids (int64) and log-probs (float32)
        [rows * seq_len, k], remaining mass [rows * seq_len]."""
        rows = [self.row(int(i)) for i in indices]
        k = self.layout.top_k
        ids = torch.from_numpy(np.stack([r[0] for r in rows]).reshape(-1, k).astype(np.int64))
        logp = torch.from_numpy(np.stack([r[1] for r in rows]).reshape(-1, k).astype(np.float32))
        rest = torch.from_numpy(np.stack([r[2] for r in rows]).reshape(-1).astype(np.float32))
        return ids.to(device), logp.to(device), rest.to(device)

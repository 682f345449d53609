"""Stored teacher log-probs: Arrow IPC files aligned row for row with a token set's shards,
memory-mapped when read.

Row r of `teacher-logits/NAME/shard-NNNNN.arrow` belongs to row r of
`tokens/TOKENS/shard-NNNNN.arrow`; it holds, for each of the row's seq_len
predicted positions, the teacher's top-k token ids (uint16 when the vocabulary
fits, else int32), their log-probs, and the log of the mass left to the other
tokens (float16 or float32). At k = 32 with float16 and a vocabulary under
65,536 that is 32 x (2 + 2) + 2 = 130 bytes per token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from miniplm.corpus.tokens import list_blocks
from miniplm.files import atomic_path

BATCH_ROWS = 64  # rows per record batch in a written file: a fixed layout, so a rerun writes the same bytes
COLUMNS = ("ids", "logprobs", "rest")


def id_dtype(vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def rows_table(ids: np.ndarray, logp: np.ndarray, rest: np.ndarray, vocab: int, logprob_dtype: str) -> pa.Table:
    """A table of rows from ids and log-probs [rows, seq_len, k] and the remaining mass [rows, seq_len]."""
    n, seq_len, k = ids.shape
    dtype = np.dtype(logprob_dtype)

    def column(values: np.ndarray, as_type: np.dtype, width: int) -> pa.Array:
        flat = pa.array(np.ascontiguousarray(values, dtype=as_type).ravel())
        return pa.FixedSizeListArray.from_arrays(flat, width)

    return pa.table({"ids": column(ids, id_dtype(vocab), seq_len * k),
                     "logprobs": column(logp, dtype, seq_len * k),
                     "rest": column(rest, dtype, seq_len)})


@dataclass(frozen=True)
class LogitsLayout:
    seq_len: int
    top_k: int
    vocab: int
    temperature: float

    def metadata(self) -> dict[bytes, bytes]:
        return {b"miniplm.teacher_logits": json.dumps(self.__dict__).encode()}


def write_logits(path: Path, table: pa.Table, layout: LogitsLayout) -> int:
    """Write the rows of a shard as one file (atomically); its size in bytes. The columns are rebuilt
    from their values, so that tables read back from checkpoints (Parquet names list items
    differently) write the same bytes as tables just computed."""
    columns = {}
    for name in COLUMNS:
        column = table[name].combine_chunks()
        columns[name] = pa.FixedSizeListArray.from_arrays(column.flatten(), column.type.list_size)
    table = pa.table(columns).replace_schema_metadata(layout.metadata())
    with atomic_path(path) as tmp:
        with ipc.new_file(str(tmp), table.schema) as writer:
            writer.write_table(table, max_chunksize=BATCH_ROWS)
    return path.stat().st_size


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
            meta = json.loads(table.schema.metadata[b"miniplm.teacher_logits"])
            layout = LogitsLayout(**meta)
            layouts.add(layout)
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

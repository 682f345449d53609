"""Packed token shards: Arrow IPC files of fixed-length rows, memory-mapped when read.

A row holds seq_len + 1 token ids (int32): a model trains on row[:-1] to
predict row[1:]. Reading maps the files instead of loading them, so a
training process touches only the rows it uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from miniplm.files import atomic_path

BATCH_ROWS = 1024


def write_rows(path: Path, rows: np.ndarray) -> None:
    """rows: [n, seq_len + 1] integer array."""
    width = rows.shape[1]
    schema = pa.schema([("input_ids", pa.list_(pa.int32(), width))])
    with atomic_path(path) as tmp, ipc.new_file(str(tmp), schema) as writer:
        for start in range(0, len(rows), BATCH_ROWS):
            chunk = np.ascontiguousarray(rows[start : start + BATCH_ROWS], dtype=np.int32)
            column = pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), width)
            writer.write_batch(pa.record_batch([column], schema=schema))


def list_blocks(column: pa.ChunkedArray) -> list[np.ndarray]:
    """A column of fixed-size lists as [rows, width] views of its values, one per chunk (no copy)."""
    width = column.type.list_size
    return [
        chunk.values.to_numpy(zero_copy_only=True)[chunk.offset * width : (chunk.offset + len(chunk)) * width].reshape(
            -1, width
        )
        for chunk in column.chunks
    ]


def row_blocks(path: Path) -> list[np.ndarray]:
    """The rows of one token shard as [rows, width] views into the mapped file."""
    return list_blocks(ipc.open_file(pa.memory_map(str(path))).read_all()["input_ids"])


class TokenRows:
    """All rows of a token set's shards, in shard order, memory-mapped (nothing is copied)."""

    def __init__(self, folder: str | Path):
        self.files = sorted(Path(folder).glob("shard-*.arrow"))
        self._blocks: list[np.ndarray] = []  # [rows, width] views into the mapped files
        for f in self.files:
            self._blocks += row_blocks(f)
        widths = {b.shape[1] for b in self._blocks}
        if len(widths) > 1:
            raise ValueError(f"{folder}: shards with different row widths {sorted(widths)}")
        self.width = widths.pop() if widths else 0
        self._offsets = np.cumsum([0] + [len(b) for b in self._blocks])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        block = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return self._blocks[block][i - self._offsets[block]]

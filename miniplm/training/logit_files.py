"""Stored teacher log-probs: Arrow IPC files aligned row for row with a token set's shards,
memory-mapped when read.

Row r of `teacher-logits/NAME/shard-NNNNN.arrow` belongs to row r of
`tokens/TOKENS/shard-NNNNN.arrow`. For each of the row's seq_len predicted
positions it holds what the set's mode keeps (training/logit_modes.py):

- top_k: the teacher's k most likely tokens, their log-probs, and the log of
  the mass left to the other tokens;
- top_p: as top_k, cut at the fewest tokens whose mass reaches p (at most k;
  `counts` says how many each position kept);
- sampled: k tokens drawn from the teacher's distribution, with their
  log-probs (no remaining mass: the draws stand for the whole distribution).

Columns: `ids`, the row's token ids packed at the vocabulary's bit width
(training/logit_codec.py); `logprobs`, each position's values in order (its
kept tokens', then, for top_k and top_p, the remaining mass) as float16,
float32 or uint8; `scales`, uint8's per-position (hi, step); `counts`, top_p's.
At k = 32 over Qwen's 151,936 tokens: 32 x 18 bits + 33 x 1 byte + 4 = 109 bytes
a token in uint8, 194 in the int32 and float16 of before.

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

from miniplm.files import atomic_path
from miniplm.training import logit_codec

BATCH_ROWS = 64
METADATA_KEY = b"miniplm.teacher_logits"
FORMAT = 2  # 1: ids as uint16/int32 lists and a separate rest column (before ids were packed)
MODES = ("top_k", "top_p", "sampled")


@dataclass(frozen=True)
class LogitsLayout:
    """What a set's files hold: rows of seq_len positions over `vocab` tokens, `top_k` kept per
    position (at most, for top_p; draws, for sampled), log-probs of softmax(logits / temperature)
    stored as `logprob_dtype`."""

    seq_len: int
    top_k: int
    vocab: int
    temperature: float
    logprob_dtype: str = "float16"
    mode: str = "top_k"
    top_p: float | None = None
    format: int = FORMAT

    @property
    def bits(self) -> int:
        return logit_codec.id_bits(self.vocab)

    @property
    def has_rest(self) -> bool:
        """Whether each position stores the log of the mass left to the tokens it did not keep."""
        return self.mode != "sampled"

    def schema(self) -> pa.Schema:
        values = pa.uint8() if self.logprob_dtype == "uint8" else pa.from_numpy_dtype(np.dtype(self.logprob_dtype))
        fields = [("ids", pa.binary()), ("logprobs", pa.list_(values))]
        if self.logprob_dtype == "uint8":
            fields.append(("scales", pa.list_(pa.float16(), 2 * self.seq_len)))
        if self.mode == "top_p":
            fields.append(("counts", pa.list_(pa.uint8(), self.seq_len)))
        return pa.schema(fields, metadata={METADATA_KEY: json.dumps(asdict(self)).encode()})

    def table(self, ids: np.ndarray, logp: np.ndarray, rest: np.ndarray | None, counts: np.ndarray | None = None):
        """Rows from ids and log-probs [rows, seq_len, k], the remaining mass [rows, seq_len] (top_k,
        top_p) and the number kept per position [rows, seq_len] (top_p: slots past it are ignored)."""
        rows, k = ids.shape[0], ids.shape[2]
        kept = np.ones(ids.shape, dtype=bool) if counts is None else np.arange(k) < counts[..., None]
        values = np.concatenate([logp, rest[..., None]], axis=2) if self.has_rest else logp
        used = np.concatenate([kept, np.ones((*kept.shape[:2], 1), bool)], axis=2) if self.has_rest else kept
        columns: dict[str, list] = {"ids": [], "logprobs": [], "scales": [], "counts": []}
        for r in range(rows):
            columns["ids"].append(logit_codec.pack_ids(ids[r][kept[r]], self.bits))
            if self.logprob_dtype == "uint8":
                codes, scales = logit_codec.quantize(values[r], used[r])
                columns["logprobs"].append(codes[used[r]])
                columns["scales"].append(scales.ravel())
            else:
                columns["logprobs"].append(values[r][used[r]].astype(self.logprob_dtype))
            if counts is not None:
                columns["counts"].append(counts[r].astype(np.uint8))
        schema = self.schema()
        arrays = [_column(columns[field.name], field.type) for field in schema]
        return pa.Table.from_arrays(arrays, schema=schema)

    def decode(self, row: dict[str, np.ndarray]) -> StoredRow:
        """One row's stored columns (as `TeacherLogitRows` reads them) as arrays per position."""
        n, k, width = self.seq_len, self.top_k, self.top_k + self.has_rest
        flat, quantized = row["logprobs"], self.logprob_dtype == "uint8"
        kept = None
        if self.mode != "top_p":  # every position holds k values (and its rest): plain reshapes
            values = flat.reshape(n, width)
            values = logit_codec.dequantize(values, row["scales"].reshape(n, 2)) if quantized else values
            values = values.astype(np.float32)
            ids = logit_codec.unpack_ids(row["ids"], n * k, self.bits).reshape(n, k)
        else:  # each position its kept values, then its rest: in row-major order of the slots in use
            counts = row["counts"].astype(np.int64)
            kept = np.arange(k) < counts[:, None]
            if quantized:
                scales = row["scales"].reshape(n, 2)[np.repeat(np.arange(n), counts + 1)]
                flat = logit_codec.dequantize(flat[:, None], scales)[:, 0]
            values = np.full((n, width), -np.inf, dtype=np.float32)
            values[np.concatenate([kept, np.ones((n, 1), bool)], axis=1)] = flat
            ids = np.zeros((n, k), dtype=np.int64)
            ids[kept] = logit_codec.unpack_ids(row["ids"], int(counts.sum()), self.bits)
            ids = np.where(kept, ids, ids[:, :1])  # unused slots repeat a kept id (their log-prob is -inf)
        if self.has_rest and self.top_k == self.vocab:
            values[:, k] = -np.inf  # every token kept: nothing remains
        if quantized and self.has_rest:  # each position's outcomes sum to 1 again
            top = values.max(axis=1, keepdims=True)
            values -= top + np.log(np.exp(values - top).sum(axis=1, keepdims=True))
        return StoredRow(ids, values[:, :k], values[:, k] if self.has_rest else None, kept)


@dataclass
class StoredRow:
    """A row's (or a batch's) stored teacher side, per position: ids and log-probs [positions, k],
    the log of the remaining mass [positions] (None for sampled), which slots hold a kept token
    [positions, k] (top_p; None: all)."""

    ids: np.ndarray | torch.Tensor
    logp: np.ndarray | torch.Tensor
    rest: np.ndarray | torch.Tensor | None
    valid: np.ndarray | torch.Tensor | None


def _column(values: list, type_: pa.DataType) -> pa.Array:
    if pa.types.is_binary(type_):
        return pa.array(values, type=type_)
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    flat = np.concatenate(values) if values else np.zeros(0)
    flat_values = pa.array(flat, type=type_.value_type)
    if pa.types.is_fixed_size_list(type_):
        return pa.FixedSizeListArray.from_arrays(flat_values, type=type_)
    return pa.ListArray.from_arrays(pa.array(offsets), flat_values, type=type_)


def _rebuilt(column: pa.ChunkedArray, type_: pa.DataType) -> pa.Array:
    """A column as the schema types it (tables read back from Parquet checkpoints name list items
    otherwise)."""
    array = column.combine_chunks()
    if pa.types.is_binary(type_):
        return array.cast(type_)
    values = array.flatten().cast(type_.value_type)
    if pa.types.is_fixed_size_list(type_):
        return pa.FixedSizeListArray.from_arrays(values, type=type_)
    offsets = np.asarray(array.offsets) - array.offsets[0].as_py()
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values, type=type_)


def write_logits(path: Path, layout: LogitsLayout, tables: Iterable[pa.Table]) -> int:
    """Write a shard's rows, arriving in order as tables of any size, as one file that appears
    complete or not at all; its size in bytes. Holds one record batch of rows at a time."""
    schema = layout.schema()
    with atomic_path(path) as tmp, ipc.new_file(str(tmp), schema) as writer:

        def emit(rows: pa.Table) -> None:
            arrays = [_rebuilt(rows[field.name], field.type) for field in schema]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))

        pending: list[pa.Table] = []
        for table in tables:
            pending.append(pa.Table.from_arrays([_rebuilt(table[f.name], f.type) for f in schema], schema=schema))
            joined = pa.concat_tables(pending)
            whole = joined.num_rows - joined.num_rows % BATCH_ROWS
            for start in range(0, whole, BATCH_ROWS):
                emit(joined.slice(start, BATCH_ROWS))
            pending = [joined.slice(whole)]
        joined = pa.concat_tables(pending) if pending else None
        if joined is not None and joined.num_rows:
            emit(joined)
    return path.stat().st_size


def count_rows(path: Path) -> int:
    """The rows a shard file holds (read from its record batches' headers, memory-mapped)."""
    with pa.memory_map(str(path)) as source:
        reader = ipc.open_file(source)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def _numpy_rows(batch: pa.RecordBatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each column of a record batch as (offsets [rows + 1], values) over the mapped buffers."""
    out = {}
    for name, column in zip(batch.schema.names, batch.columns):
        if pa.types.is_binary(column.type):
            offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[
                column.offset : column.offset + len(column) + 1
            ]
            out[name] = (offsets, np.frombuffer(column.buffers()[2], dtype=np.uint8))
        elif pa.types.is_fixed_size_list(column.type):
            width = column.type.list_size
            values = column.values.to_numpy(zero_copy_only=False)
            out[name] = (np.arange(len(column) + 1) * width + column.offset * width, values)
        else:
            out[name] = (np.asarray(column.offsets), column.values.to_numpy(zero_copy_only=False))
    return out


class TeacherLogitRows:
    """Every row of a teacher_logits set's shards, in shard order, memory-mapped, indexed like the
    token set's rows (miniplm.corpus.tokens.TokenRows)."""

    def __init__(self, folder: str | Path):
        self.files = sorted(Path(folder).glob("shard-*.arrow"))
        if not self.files:
            raise FileNotFoundError(f"{folder}: no teacher-logits shards")
        self._blocks: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        layouts = set()
        for f in self.files:
            reader = ipc.open_file(pa.memory_map(str(f)))
            stored = json.loads(reader.schema.metadata[METADATA_KEY])
            if stored.get("format", 1) != FORMAT:
                raise ValueError(
                    f"{f}: teacher log-probs in an earlier format of miniplm's (ids not packed); write the "
                    "set again with `miniplm teacher-logits --only NAME --force`"
                )
            layouts.add(LogitsLayout(**stored))
            self._blocks += [_numpy_rows(reader.get_batch(i)) for i in range(reader.num_record_batches)]
        if len(layouts) > 1:
            raise ValueError(f"{folder}: shards written with different settings: {sorted(map(str, layouts))}")
        self.layout = layouts.pop()
        self._offsets = np.cumsum([0] + [len(b["ids"][0]) - 1 for b in self._blocks])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def stored(self, i: int) -> StoredRow:
        """Row i, decoded: per position, the kept ids, their log-probs, the remaining mass."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        b = int(np.searchsorted(self._offsets, i, side="right") - 1)
        r = i - self._offsets[b]
        return self.layout.decode(
            {name: values[offsets[r] : offsets[r + 1]] for name, (offsets, values) in self._blocks[b].items()}
        )

    def batch(self, indices: np.ndarray, device: str | torch.device) -> StoredRow:
        """The rows at `indices`, flattened to positions, as tensors on `device`: ids (int64) and
        log-probs (float32) [rows * seq_len, k], remaining mass [rows * seq_len], kept slots."""
        rows = [self.stored(int(i)) for i in indices]
        k = self.layout.top_k

        def joined(field: str, dtype) -> torch.Tensor | None:
            parts = [getattr(r, field) for r in rows]
            if parts[0] is None:
                return None
            flat = np.concatenate(parts).reshape(-1, k) if field != "rest" else np.concatenate(parts)
            return torch.from_numpy(flat.astype(dtype)).to(device)

        return StoredRow(
            joined("ids", np.int64), joined("logp", np.float32), joined("rest", np.float32), joined("valid", bool)
        )

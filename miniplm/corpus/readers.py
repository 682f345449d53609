"""Streaming readers for raw sources.

Each reader yields, in file order, either a `RawDoc` (a record whose fields
still need checking) or a `Rejection` (input that could not be read, with its
file and line). Memory stays bounded by one batch of rows or one line,
whatever the size of the file: an over-long JSONL line is skipped in chunks
without being held whole.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pyzstd

from miniplm.corpus.parquet import READ_BUFFER_BYTES, iter_batches
from miniplm.schema.corpus import InputSpec

TABLE_BATCH_ROWS = 1024


@dataclass
class RawDoc:
    line: int  # 1-based: the JSONL line, or the row number in a table
    text: Any
    id: Any = None
    source: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejection:
    reason: str
    file: str
    line: int | None
    detail: str
    count: int = 1  # records lost (a table missing its text column loses all its rows)


Item = RawDoc | Rejection


def max_line_bytes(max_chars: int) -> int:
    # JSON can spend up to 12 bytes on one character (a \uXXXX surrogate pair);
    # the slack covers the other fields of the record.
    return max_chars * 12 + (1 << 20)


def _field(row: dict[str, Any], name: str) -> Any:
    """A record's field; a dotted name reaches into nested objects (the Pile's meta.pile_set_name)."""
    if name in row:
        return row[name]
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _fields_of(row: dict[str, Any], spec: InputSpec, line: int) -> RawDoc:
    return RawDoc(
        line=line,
        text=_field(row, spec.text_field),
        id=_field(row, spec.id_field) if spec.id_field else None,
        source=_field(row, spec.source_field) if spec.source_field else None,
        meta={name: _field(row, name) for name in spec.metadata_fields},
    )


# ---------------------------------------------------------------- JSONL


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.endswith(".zst") or path.endswith(".zstd"):
        # pyzstd bounds each read's output (a small file can expand to gigabytes)
        # and raises EOFError when the data stops mid-frame.
        return pyzstd.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=1 << 20)


_STREAM_ERRORS = (OSError, EOFError, pyzstd.ZstdError)


def read_jsonl(path: str, spec: InputSpec, max_chars: int) -> Iterator[Item]:
    limit = max_line_bytes(max_chars)
    try:
        f = _open_binary(path)
    except OSError as e:
        yield Rejection("unreadable_file", path, None, e.strerror or str(e))
        return
    line_no = 0
    with f:
        while True:
            try:
                raw = f.readline(limit)
                if not raw:
                    return
                line_no += 1
                if len(raw) == limit and not raw.endswith(b"\n"):
                    while (chunk := f.readline(1 << 20)) and not chunk.endswith(b"\n"):
                        pass
                    yield Rejection("too_long", path, line_no, f"line longer than {limit} bytes")
                    continue
            except _STREAM_ERRORS as e:
                yield Rejection("truncated_file", path, line_no + 1, f"{type(e).__name__}: {e}")
                return
            if not raw.strip():
                continue  # a blank line is not a record
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Rejection("invalid_utf8", path, line_no, str(e))
                continue
            try:
                row = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                yield Rejection("malformed_json", path, line_no, str(e))
                continue
            if not isinstance(row, dict):
                yield Rejection("malformed_json", path, line_no, f"expected a JSON object, got {type(row).__name__}")
                continue
            if spec.id_field and isinstance(row.get(spec.id_field), float):
                # orjson reads integers beyond 64 bits as floats, and distinct ids would collide
                row = json.loads(text)
            yield _fields_of(row, spec, line_no)


# ---------------------------------------------------------------- tables


def _text_type_problem(schema: pa.Schema, spec: InputSpec) -> tuple[str, str] | None:
    names = schema.names
    if spec.text_field not in names:
        return "missing_text", f"no column {spec.text_field!r} (columns: {', '.join(names)})"
    if spec.id_field and spec.id_field not in names:
        return "missing_id", f"no column {spec.id_field!r}"
    t = schema.field(spec.text_field).type
    if not (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_string_view(t)
    ):
        return "not_string", f"column {spec.text_field!r} has type {t}"
    return None


def _wanted_columns(schema: pa.Schema, spec: InputSpec) -> list[str]:
    wanted = [spec.text_field, spec.id_field, spec.source_field, *spec.metadata_fields]
    return [c for c in dict.fromkeys(wanted) if c and c in schema.names]


def _rows_of(batch: dict[str, list], spec: InputSpec, first_line: int, path: str) -> Iterator[Item]:
    n = len(next(iter(batch.values()))) if batch else 0
    for i in range(n):
        row = {name: values[i] for name, values in batch.items()}
        text = row.get(spec.text_field)
        if isinstance(text, bytes):
            try:
                row[spec.text_field] = text.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Rejection("invalid_utf8", path, first_line + i, str(e))
                continue
        yield _fields_of(row, spec, first_line + i)


def read_parquet(path: str, spec: InputSpec) -> Iterator[Item]:
    try:
        pf = pq.ParquetFile(path, buffer_size=READ_BUFFER_BYTES)
    except (OSError, pa.ArrowException) as e:
        yield Rejection("unreadable_file", path, None, f"{type(e).__name__}: {e}")
        return
    total = pf.metadata.num_rows
    problem = _text_type_problem(pf.schema_arrow, spec)
    if problem:
        yield Rejection(problem[0], path, None, problem[1], count=total)
        return
    done = 0
    try:
        for batch in iter_batches(pf, TABLE_BATCH_ROWS, _wanted_columns(pf.schema_arrow, spec)):
            yield from _rows_of(batch.to_pydict(), spec, done + 1, path)
            done += batch.num_rows
    except (OSError, pa.ArrowException) as e:
        yield Rejection("truncated_file", path, done + 1, f"{type(e).__name__}: {e}", count=max(total - done, 1))


def _load_hf(spec: InputSpec):
    import datasets

    if spec.format == "hf_hub":
        return datasets.load_dataset(spec.path, split=spec.split, streaming=True)
    ds = datasets.load_from_disk(spec.path)
    if isinstance(ds, datasets.DatasetDict):
        if spec.split not in ds:
            raise KeyError(f"no split {spec.split!r} (splits: {', '.join(ds)})")
        ds = ds[spec.split]
    return ds


def read_hf(spec: InputSpec) -> Iterator[Item]:
    """A `save_to_disk` folder (memory-mapped Arrow) or a hub dataset (streamed)."""
    try:
        ds = _load_hf(spec)
    except Exception as e:  # datasets raises many kinds; any of them means "cannot read this input"
        yield Rejection("unreadable_file", spec.path, None, f"{type(e).__name__}: {e}")
        return
    if spec.format == "hf_disk":
        schema = ds.data.schema
        problem = _text_type_problem(schema, spec)
        if problem:
            yield Rejection(problem[0], spec.path, None, problem[1], count=len(ds))
            return
        ds = ds.select_columns(_wanted_columns(schema, spec))
        done = 0
        for batch in ds.iter(batch_size=TABLE_BATCH_ROWS):
            yield from _rows_of(batch, spec, done + 1, spec.path)
            done += len(batch[spec.text_field])
        return
    line = 0
    try:
        for row in ds:
            line += 1
            yield from _rows_of({k: [v] for k, v in row.items()}, spec, line, spec.path)
    except Exception as e:
        yield Rejection("truncated_file", spec.path, line + 1, f"{type(e).__name__}: {e}")


# ---------------------------------------------------------------- plain text


def read_text_file(path: str, max_chars: int) -> Iterator[Item]:
    """One document per file."""
    try:
        size = os.path.getsize(path)
        if size > max_chars * 4:  # more bytes than max_chars characters can take in UTF-8
            yield Rejection("too_long", path, 1, f"{size} bytes")
            return
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        yield Rejection("unreadable_file", path, None, e.strerror or str(e))
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield Rejection("invalid_utf8", path, 1, str(e))
        return
    yield RawDoc(line=1, text=text)


def read_input(spec: InputSpec, paths: tuple[str, ...], max_chars: int) -> Iterator[tuple[str, Item]]:
    """Every item of the given files of one input, each with the file it came from."""
    for path in paths:
        if spec.format == "jsonl":
            items = read_jsonl(path, spec, max_chars)
        elif spec.format == "parquet":
            items = read_parquet(path, spec)
        elif spec.format == "text":
            items = read_text_file(path, max_chars)
        else:
            items = read_hf(spec)
        for item in items:
            yield path, item

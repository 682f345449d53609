"""Each export format read back by its own library, as its trainer reads it: the sequences of an
export, in provenance order, found by each provenance row's (file, item, offset, length)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from miniplm.export.mds import FORMAT as MDS


def megatron(out: Path, rows: pa.Table) -> list[np.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    datasets: dict[str, IndexedDataset] = {}
    found = []
    for row in rows.to_pylist():
        prefix = row["file"].removesuffix(".bin")
        data = datasets.setdefault(prefix, IndexedDataset(str(out / prefix)))
        tokens = data[row["item"]]
        assert int(data.index.sequence_pointers[row["item"]]) == row["offset"] * data.index.dtype_size
        found.append(np.asarray(tokens, dtype=np.int64))
    return found


def olmo_npy(out: Path, rows: pa.Table, eos: int, dtype: str) -> tuple[list[np.ndarray], dict[str, list]]:
    """The sequences by offset, and OLMo-core's own document boundaries (EOS-ended) per file."""
    from olmo_core.data.utils import iter_document_indices, load_array_slice

    found, documents = [], {}
    for row in rows.to_pylist():
        path = out / row["file"]
        if row["file"] not in documents:
            documents[row["file"]] = [
                (int(a), int(b)) for a, b in iter_document_indices(path, eos_token_id=eos, dtype=np.dtype(dtype).type)
            ]
        start = row["offset"]
        found.append(load_array_slice(path, start, start + row["length"], np.dtype(dtype).type).astype(np.int64))
    return found, documents


def litdata(out: Path, rows: pa.Table) -> list[np.ndarray]:
    """TokensLoader's stream (block_size 1: every token, in chunk order), cut by the chunks' sizes."""
    from litdata import StreamingDataset, TokensLoader

    stream = StreamingDataset(str(out), item_loader=TokensLoader(block_size=1))
    tokens = np.array([int(stream[i][0]) for i in range(len(stream))], dtype=np.int64)
    starts, at = {}, 0
    for chunk in json.loads((out / "index.json").read_text())["chunks"]:
        starts[chunk["filename"]] = at
        at += chunk["dim"]
    assert at == len(tokens)
    return [tokens[starts[r["file"]] + r["offset"] :][: r["length"]] for r in rows.to_pylist()]


def mds(out: Path, rows: pa.Table) -> list[np.ndarray]:
    streaming = MDS.library()
    data = streaming.StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    firsts, at = {}, 0
    for part in json.loads((out / "index.json").read_text())["shards"]:
        firsts[part["raw_data"]["basename"]] = at
        at += part["samples"]
    assert at == len(data)
    return [np.asarray(data[firsts[r["file"]] + r["item"]]["tokens"], dtype=np.int64) for r in rows.to_pylist()]


def olmo_fsl(out: Path, files: list[str], sequence_length: int, eos: int, vocab_size: int, dtype: str, work: Path):
    """The training instances OLMo-core's fixed-length dataset cuts from the files, in order."""
    from olmo_core.data import NumpyFSLDataset

    data = NumpyFSLDataset(
        *(str(out / f) for f in files),
        sequence_length=sequence_length,
        pad_token_id=eos,
        eos_token_id=eos,
        vocab_size=vocab_size,
        dtype=np.dtype(dtype).type,
    )
    data.work_dir = work
    data.prepare()
    return [np.asarray(data[i]["input_ids"], dtype=np.int64) for i in range(len(data))]

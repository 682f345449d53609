"""Megatron's indexed dataset (.bin + .idx): Megatron-LM, Megatron-Core, NeMo and GPT-NeoX train on it.

Each shard is one dataset prefix, `shard-NNNNN` (`.bin`, `.idx`), written with megatron-core's own
builder: one document per sequence, the type chosen as Megatron's preprocessing chooses it.
Megatron takes every prefix in one `--data-path`, each weighted by its tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from miniplm.export.formats import Format, Placed, new_tmp_dir
from miniplm.rundir import shard_name


class Megatron(Format):
    name = "megatron"
    package = "megatron-core"
    module = "megatron.core.datasets.indexed_dataset"
    dtypes = ("uint16", "int32")

    def auto_dtype(self, vocab_size: int) -> str:
        return np.dtype(self.library().DType.optimal_dtype(vocab_size)).name

    def write_shard(self, out: Path, shard: int, sequences: list[np.ndarray], dtype: str) -> list[Placed]:
        indexed = self.library()
        prefix = out / shard_name(shard, "")
        tmp = new_tmp_dir(out, prefix.name)
        builder = indexed.IndexedDatasetBuilder(str(tmp / "data.bin"), dtype=np.dtype(dtype).type)
        placed, offset = [], 0
        for i, tokens in enumerate(sequences):
            builder.add_document(tokens, [len(tokens)])  # it takes what numpy.array takes; a tensor warns
            placed.append(Placed(f"{prefix.name}.bin", i, offset))
            offset += len(tokens)
        builder.finalize(str(tmp / "data.idx"))
        os.replace(tmp / "data.bin", f"{prefix}.bin")  # the index last: a prefix with an .idx is whole
        os.replace(tmp / "data.idx", f"{prefix}.idx")
        tmp.rmdir()
        return placed

    def train_hint(self, out: Path, files: list[str], tokens: list[int]) -> str:
        pairs = " ".join(f"{n} {out / f.removesuffix('.bin')}" for f, n in zip(files, tokens) if n)
        return f"--data-path {pairs}"


FORMAT = Megatron()

"""OLMo-core's numpy token files: flat arrays of token ids (no header, as `np.memmap` maps them),
documents separated by EOS, uint16 or uint32 by vocabulary; written with OLMo-core's own writer.
OLMo-core's `NumpyDatasetConfig` takes the files as `paths`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from miniplm.export.formats import Format, Placed
from miniplm.rundir import shard_name


class OlmoNpy(Format):
    name = "olmo-npy"
    package = "ai2-olmo-core"
    module = "olmo_core.data.utils"
    dtypes = ("uint16", "uint32")

    def auto_dtype(self, vocab_size: int) -> str:
        return "uint16" if vocab_size <= 2**16 else "uint32"

    def write_shard(
        self, out: Path, shard: int, sequences: list[np.ndarray], dtype: str, scratch: Path
    ) -> list[Placed]:
        file = shard_name(shard, ".npy")
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist() if len(sequences) else []
        stream = np.concatenate(sequences).astype(dtype) if sequences else np.zeros(0, dtype=dtype)
        self.library().write_array_to_disk(stream, out / file)  # through a temporary file, renamed whole
        return [Placed(file, i, int(o)) for i, o in enumerate(offsets)]

    def train_hint(self, out: Path, files: list[str], tokens: list[int]) -> str:
        paths = ", ".join(f'"{out / f}"' for f, n in zip(files, tokens) if n)
        return f"OLMo-core: NumpyFSLDatasetConfig(paths=[{paths}], dtype=..., tokenizer=..., sequence_length=...)"


FORMAT = OlmoNpy()

"""OLMo-core's numpy token files: flat arrays of token ids (no header, as `np.memmap` maps them),
uint16 or uint32 by vocabulary; documents are followed by their EOS, which is how OLMo-core finds
them. Its data-loading guide writes them with numpy's memmap; numpy writes them here too (under a
temporary name, renamed whole), and the tests read them back with OLMo-core's own dataset.
OLMo-core's `NumpyFSLDatasetConfig` takes the files as `paths`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from miniplm.export.formats import Format, Placed
from miniplm.files import atomic_path
from miniplm.rundir import shard_name


class OlmoNpy(Format):
    name = "olmo-npy"
    package = "ai2-olmo-core"  # to train on them; writing needs numpy alone
    module = ""
    dtypes = ("uint16", "uint32")

    def auto_dtype(self, vocab_size: int) -> str:
        return "uint16" if vocab_size <= 2**16 else "uint32"

    def write_shard(self, out: Path, shard: int, sequences: list[np.ndarray], dtype: str) -> list[Placed]:
        file = shard_name(shard, ".npy")
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
        with atomic_path(out / file) as tmp:
            np.concatenate(sequences).astype(dtype).tofile(tmp)
        return [Placed(file, i, int(o)) for i, o in enumerate(offsets)]

    def train_hint(self, out: Path, files: list[str], tokens: list[int]) -> str:
        paths = ", ".join(f'"{out / f}"' for f, n in zip(files, tokens) if n)
        return f"OLMo-core: NumpyFSLDatasetConfig(paths=[{paths}], dtype=..., tokenizer=..., sequence_length=...)"


FORMAT = OlmoNpy()

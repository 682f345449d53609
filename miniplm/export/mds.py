"""MosaicML streaming's MDS shards, read by `streaming.StreamingDataset`: what llm-foundry trains on.

Each shard is a partition folder `shard-NNNNN/` written by streaming's own `MDSWriter`, one sample
per sequence in a `tokens` column (int32 arrays, as llm-foundry's data preparation writes them);
the end joins the partitions' indexes into one `index.json` with streaming's `merge_index`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np

from miniplm.errors import ConfigError
from miniplm.export.formats import Format, Placed, new_tmp_dir
from miniplm.rundir import shard_name

SIZE_LIMIT = 1 << 26  # bytes per .mds file, streaming's default


class Mds(Format):
    name = "mds"
    package = "mosaicml-streaming"
    module = "streaming"
    dtypes = ("uint16", "int32")

    def auto_dtype(self, vocab_size: int) -> str:
        return "int32"

    def library(self):
        if importlib.util.find_spec(self.module) is None:
            return super().library()  # says what to install
        try:
            return importlib.import_module(self.module)
        except (ImportError, RuntimeError):  # its torchvision: see _without_vision
            return _without_vision()

    def write_shard(self, out: Path, shard: int, sequences: list[np.ndarray], dtype: str) -> list[Placed]:
        streaming = self.library()
        folder = out / shard_name(shard, "")
        tmp = new_tmp_dir(out, folder.name)
        with streaming.MDSWriter(
            out=str(tmp),
            columns={"tokens": f"ndarray:{dtype}"},
            compression=None,
            size_limit=SIZE_LIMIT,
            progress_bar=False,
        ) as writer:
            for tokens in sequences:
                writer.write({"tokens": tokens.astype(dtype)})
        placed, at = [], 0
        for part in json.loads((tmp / "index.json").read_text())["shards"]:
            offset = 0
            for item in range(part["samples"]):
                placed.append(Placed(f"{folder.name}/{part['raw_data']['basename']}", item, offset))
                offset += len(sequences[at])
                at += 1
        shutil.rmtree(folder, ignore_errors=True)  # a partition written before, by a run killed since
        tmp.rename(folder)
        return placed

    def finish(self, out: Path, shards: int, stamp: str) -> None:
        from streaming.base.util import merge_index

        self.library()
        indexes = [str(p) for i in range(shards) if (p := out / shard_name(i, "") / "index.json").exists()]
        if indexes:  # none: nothing was exported, and MDS has no empty dataset
            merge_index(indexes, str(out), keep_local=True)

    def train_hint(self, out: Path, files: list[str], tokens: list[int]) -> str:
        return f"llm-foundry: train_loader: {{name: text, dataset: {{local: {out}, max_seq_len: ...}}}}"


def _without_vision():
    """streaming imports its image datasets, and so torchvision, when it loads; PyPI's torchvision
    is built against CUDA and does not load beside a CPU-only torch. The MDS writer and reader use
    none of it: load streaming with a placeholder for the two names it takes from torchvision, then
    take the placeholder away again (transformers, imported first, has already looked for torchvision)."""
    import transformers  # noqa: F401

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # what a failed import left half-loaded
    names = ("torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.transforms.functional")
    placeholder = {name: types.ModuleType(name) for name in names}
    placeholder["torchvision.datasets"].VisionDataset = object
    placeholder["torchvision.transforms.functional"].to_tensor = None
    sys.modules.update(placeholder)
    try:
        return importlib.import_module("streaming")
    except ImportError as e:
        raise ConfigError(f"export format mds is written with mosaicml-streaming, which failed to load: {e}") from e
    finally:
        for name in names:
            sys.modules.pop(name, None)


FORMAT = Mds()

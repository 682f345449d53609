"""litdata's optimized chunks, read with `TokensLoader`: what litgpt's `pretrain --data LitData` trains on.

Each shard is written by litdata's own writer as if it were one of litdata's workers (rank = shard),
into `chunk-SHARD-K.bin` and `SHARD.index.json`; the end joins the workers' indexes into
`index.json` with litdata's own merge. `TokensLoader` reads the items as one stream of tokens cut
into blocks, so each sequence ends with the EOS that separates it from the next.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from miniplm.export.formats import Format, Placed
from miniplm.files import atomic_write_text, move_into

CHUNK_BYTES = "64MB"
INDEX = "index.json"


class LitData(Format):
    name = "litdata"
    package = "litdata"
    module = "litdata"
    dtypes = ("uint16", "int32")

    def auto_dtype(self, vocab_size: int) -> str:
        return "int32"  # litgpt's tokenizer gives int32 tensors, and its data preparation stores them so

    def write_shard(
        self, out: Path, shard: int, sequences: list[np.ndarray], dtype: str, scratch: Path
    ) -> list[Placed]:
        import torch
        from litdata.streaming.writer import BinaryWriter

        tmp = out / f".shard-{shard}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        writer = BinaryWriter(str(tmp), chunk_bytes=CHUNK_BYTES, item_loader=self.library().TokensLoader())
        writer._rank = shard  # litdata names a worker's chunks and index by its rank; a shard is one worker
        for i, tokens in enumerate(sequences):
            writer.add_item(i, torch.from_numpy(tokens.astype(dtype)))
        writer.done()
        index = tmp / f"{shard}.{INDEX}"
        placed = []
        if index.exists():  # litdata writes no index for a worker with no items
            scratch.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(index, scratch / index.name)  # the merge deletes it from the output; a rerun needs it
            at = 0
            for chunk in json.loads(index.read_text())["chunks"]:
                offset = 0
                for item in range(chunk["chunk_size"]):
                    placed.append(Placed(chunk["filename"], item, offset))
                    offset += len(sequences[at])
                    at += 1
        move_into(tmp, out)
        return placed

    def finish(self, out: Path, shards: int, scratch: Path, stamp: str) -> None:
        from litdata.streaming.writer import BinaryWriter

        indexes = sorted(scratch.glob(f"*.{INDEX}"))
        if not indexes:
            return  # nothing was exported: litdata has no empty dataset
        (out / INDEX).unlink(missing_ok=True)
        for index in indexes:  # again, should a merge have been cut short
            shutil.copyfile(index, out / index.name)
        writer = BinaryWriter(str(out), chunk_bytes=CHUNK_BYTES, item_loader=self.library().TokensLoader())
        writer.merge(num_workers=len(indexes))
        merged = json.loads((out / INDEX).read_text())
        merged["updated_at"] = stamp  # litdata writes the time here; the stage's hash changes with what it holds
        atomic_write_text(out / INDEX, json.dumps(merged, sort_keys=True))

    def train_hint(self, out: Path, files: list[str], tokens: list[int]) -> str:
        return f"litgpt pretrain MODEL --data LitData --data.data_path {out}"


FORMAT = LitData()

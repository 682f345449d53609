"""litdata's optimized chunks, read with `TokensLoader`: what litgpt's `pretrain --data LitData` trains on.

Each shard is written by litdata's own writer as if it were one of litdata's workers (rank = shard),
into `chunk-SHARD-K.bin`; its worker index is kept as `shard-NNNNN.index.json`, and the end joins
them, in shard order, into the dataset's `index.json` as litdata's merge joins its workers' (the
chunk lists one after another, one config). litdata's own `merge` waits for as many indexes as the
distributed environment it detects has workers, which under torchrun-style RANK / WORLD_SIZE
variables is not the number of shards, and it deletes the worker indexes it reads. `TokensLoader`
reads the items as one stream of tokens cut into blocks (documents keep the EOS that ends them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from miniplm.errors import StageError
from miniplm.export.formats import Format, Placed, new_tmp_dir
from miniplm.files import atomic_write_text, move_into
from miniplm.rundir import shard_name

CHUNK_BYTES = "64MB"
INDEX = "index.json"


class LitData(Format):
    name = "litdata"
    package = "litdata"
    module = "litdata"
    dtypes = ("uint16", "int32")

    def auto_dtype(self, vocab_size: int) -> str:
        return "int32"  # litgpt's tokenizer gives int32 tensors, and its data preparation stores them so

    def write_shard(self, out: Path, shard: int, sequences: list[np.ndarray], dtype: str) -> list[Placed]:
        import torch
        from litdata.streaming.writer import BinaryWriter

        tmp = new_tmp_dir(out, shard_name(shard, ""))
        writer = BinaryWriter(str(tmp), chunk_bytes=CHUNK_BYTES, item_loader=self.library().TokensLoader())
        writer._rank = shard  # litdata names a worker's chunks and index by its rank; a shard is one worker
        for i, tokens in enumerate(sequences):
            writer.add_item(i, torch.from_numpy(tokens.astype(dtype)))
        writer.done()
        index = json.loads((tmp / f"{shard}.{INDEX}").read_text())
        placed, at = [], 0
        for chunk in index["chunks"]:
            offset = 0
            for item in range(chunk["chunk_size"]):
                placed.append(Placed(chunk["filename"], item, offset))
                offset += len(sequences[at])
                at += 1
        (tmp / f"{shard}.{INDEX}").rename(tmp / shard_index(shard))
        move_into(tmp, out)
        return placed

    def finish(self, out: Path, shards: int, stamp: str) -> None:
        indexes = [json.loads(p.read_text()) for i in range(shards) if (p := out / shard_index(i)).exists()]
        if not indexes:
            return  # nothing was exported: litdata has no empty dataset
        configs = {json.dumps(_without_types(i["config"]), sort_keys=True) for i in indexes}
        if len(configs) > 1:
            raise StageError(
                f"{out}: the shards' litdata configs differ ({sorted(configs)}); export again with --force"
            )
        merged = {
            "chunks": [chunk for index in indexes for chunk in index["chunks"]],
            "config": indexes[0]["config"],
            "updated_at": stamp,  # where litdata writes the time: the stage's hash, which changes with what it holds
        }
        atomic_write_text(out / INDEX, json.dumps(merged, sort_keys=True))

    def train_hint(self, out: Path, files: list[str], tokens: list[int]) -> str:
        return f"litgpt pretrain MODEL --data LitData --data.data_path {out}"


def shard_index(shard: int) -> str:
    return shard_name(shard, f".{INDEX}")


def _without_types(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "types"}


FORMAT = LitData()

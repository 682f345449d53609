"""What every export format is: its library, the token types it takes, and how it writes a shard.

A format writes each shard of an export on its own (any worker, any array task) and joins them once
at the end where the format has one index for the whole dataset. Each is written with the format's
own library, imported only when an export asks for it, so a missing one is a clear error naming the
package to install and not a failure at start-up.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from miniplm.errors import ConfigError


@dataclass(frozen=True)
class Placed:
    """Where one sequence went: the file (relative to the export's folder), its index among that
    file's sequences, and the tokens before it in that file."""

    file: str
    item: int
    offset: int


class Format:
    name: str = ""
    package: str = ""  # what `pip install` takes
    module: str = ""  # what it imports ("": written with numpy alone)
    dtypes: tuple[str, ...] = ()  # the token types its readers take, smallest first

    def auto_dtype(self, vocab_size: int) -> str:
        """The type its own tools choose for a vocabulary of `vocab_size` ids."""
        raise NotImplementedError

    def library(self):
        """The format's library, imported; a ConfigError naming the package when it is missing."""
        if not self.module:
            return None
        try:
            return importlib.import_module(self.module)
        except ImportError as e:
            raise ConfigError(
                f"export format {self.name} is written with {self.package}: pip install {self.package} ({e})"
            ) from e

    def write_shard(self, out: Path, shard: int, sequences: list[np.ndarray], dtype: str) -> list[Placed]:
        """Write one shard's sequences, which are never none (a shard with none writes no files),
        under temporary names renamed into place: a shard killed midway is written again."""
        raise NotImplementedError

    def finish(self, out: Path, shards: int, stamp: str) -> None:
        """Once every shard is written: the dataset's index, where the format has one for all shards;
        `stamp` stands wherever the library would write the time, so that a rerun writes the same bytes."""

    def train_hint(self, out: Path, files: list[str], tokens: list[int]) -> str:
        """How its trainer is pointed at the export."""
        raise NotImplementedError


def vocabulary_fits(dtype: str, vocab_size: int) -> bool:
    return vocab_size - 1 <= np.iinfo(np.dtype(dtype)).max


TMP = ".tmp"


def new_tmp_dir(out: Path, name: str) -> Path:
    """A folder of its own in `out` for one writer (two processes writing one shard must not share it),
    made with the mode the umask gives, as any new folder."""
    while True:
        tmp = out / f".{name}.{secrets.token_hex(4)}{TMP}"
        try:
            os.mkdir(tmp)
            return tmp
        except FileExistsError:
            continue


def remove_tmp(out: Path) -> None:
    """What writers killed midway left: `.NAME.XXXX.tmp` files and folders."""
    for path in out.glob(f".*{TMP}"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

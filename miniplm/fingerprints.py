"""Content fingerprints: a fast hash of a file's bytes (xxh3, 128 bits), remembered by the file's
identity (real path, size, modification time, inode, change time), so a 100 GB corpus is read once
and then recognised from a `stat` on every later command.

The cache is one small JSON file per hashed file, each written whole under a temporary name: any
number of processes, on any number of nodes sharing the folder, may use it at once, and the worst
a race costs is hashing a file twice. Files outside a run (corpora, models) are remembered in
CACHE/fingerprints/ (CACHE is $MINIPLM_CACHE, else ~/.cache/miniplm); a run's own outputs in the
run directory (records.py), so that they go when it goes. A file modified less than RECENT_SECONDS
before it was hashed is not remembered: a second write within the clock's resolution could leave
every part of its identity unchanged.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Iterable, Sequence

import xxhash

from miniplm.files import atomic_write_text, cache_dir
from miniplm.paths import walk_files

READ_BYTES = 8 << 20
RECENT_SECONDS = 2.0
SHOW_PROGRESS_BYTES = 1 << 30  # a bar when more than this has to be read
NOT_A_FILE = "not-a-regular-file"  # a pipe or device: its content cannot be read twice


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def identity(path: str | os.PathLike) -> list[int] | None:
    """(size, modification time, inode, change time) of a file; None when it is not there."""
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def settled(ident: list[int]) -> bool:
    """Whether a file of this identity was last written long enough ago for its identity to be
    trusted to change with its content."""
    return time.time_ns() - ident[1] > RECENT_SECONDS * 1e9


def _entry(real: str, cache: Path | None) -> Path:
    return (cache or cache_dir() / "fingerprints") / xxhash.xxh3_128_hexdigest(real.encode())


def hash_bytes(path: str | os.PathLike, progress=None) -> str:
    """xxh3-128 of a file's bytes, read in 8 MB blocks."""
    h = xxhash.xxh3_128()
    buffer = bytearray(READ_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
            if progress is not None:
                progress.update(n)
    return h.hexdigest()


def cached(path: str | os.PathLike, cache: Path | None = None) -> str | None:
    """The fingerprint remembered for the file as it is now (in `cache`, else the user's), or None."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            return NOT_A_FILE
        entry = json.loads(_entry(real, cache).read_text())
        if entry["path"] == real and entry["stat"] == _identity(st):
            return str(entry["xxh3_128"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def fingerprint(path: str | os.PathLike, progress=None, cache: Path | None = None) -> str:
    """The file's content hash, from the cache when the file is unchanged since it was hashed.
    A file that cannot be read (gone, a dangling link, no permission) says so instead: the stage
    reading it reports it in its own way."""
    known = cached(path, cache)
    if known is not None:
        return known
    real = os.path.realpath(path)
    try:
        before = os.stat(real)
        digest = hash_bytes(real, progress)
        after = os.stat(real)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if _identity(before) == _identity(after) and settled(_identity(after)):
        try:
            atomic_write_text(
                _entry(real, cache), json.dumps({"path": real, "stat": _identity(after), "xxh3_128": digest})
            )
        except OSError:
            pass  # a read-only or full cache costs time, never correctness
    return digest


def _bar(paths: Sequence[str], show_progress: bool, cache: Path | None):
    """A bytes bar over the files that are not in the cache, when they are big enough to wait for."""
    if not show_progress:
        return None
    missing = 0
    for p in paths:
        if cached(p, cache) is None:
            try:
                missing += os.path.getsize(p)
            except OSError:
                pass
    if missing < SHOW_PROGRESS_BYTES:
        return None
    from tqdm import tqdm

    return tqdm(total=missing, desc="fingerprint", unit="B", unit_scale=True, dynamic_ncols=True)


def fingerprints(
    paths: Sequence[str], *, start: int = 0, show_progress: bool = False, cache: Path | None = None
) -> dict[str, str]:
    """Each file's fingerprint. Hashing begins at position `start` and wraps around, so workers
    that begin at different positions share the work of a cold cache instead of repeating it."""
    order = list(paths[start % len(paths) :]) + list(paths[: start % len(paths)]) if paths else []
    bar = _bar(order, show_progress, cache)
    try:
        found = {p: fingerprint(p, bar, cache) for p in order}
    finally:
        if bar is not None:
            bar.close()
    return {p: found[p] for p in paths}


def combine(named: Iterable[tuple[str, str]]) -> str:
    """One digest over (name, fingerprint) pairs, in the order given."""
    h = xxhash.xxh3_128()
    for name, value in named:
        h.update(f"{name}\0{value}\n".encode())
    return h.hexdigest()


def folder_fingerprint(folder: str | os.PathLike, *, start: int = 0, show_progress: bool = False) -> str:
    """One digest over every file in a folder (a model: config, weights, tokenizer), by relative name."""
    files = walk_files(str(folder))
    found = fingerprints(files, start=start, show_progress=show_progress)
    return combine((os.path.relpath(p, folder), found[p]) for p in files)


def model_fingerprint(path: str, *, show_progress: bool = False) -> str:
    """A model folder's content (config, weights, tokenizer), or a config file's; a hub id's name,
    which is all that can be known of it without downloading."""
    if os.path.isdir(path):
        return f"{path}@{folder_fingerprint(path, show_progress=show_progress)}"
    if os.path.isfile(path):
        return f"{path}@{fingerprint(path)}"
    return path


TOKENIZER_FILES = (
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
TOKENIZER_SUFFIXES = (".model", ".tiktoken")  # sentencepiece (spiece.model, ...), tiktoken ranks


def tokenizer_files(folder: str | os.PathLike) -> list[str]:
    """The files of a model folder that its tokenizer is loaded from (tokenizer.json,
    tokenizer_config.json, vocab and merges, a sentencepiece model, ...), not its weights. config.json
    is one of them when tokenizer_config.json does not name the tokenizer's class: it is then read
    for the model type that picks it."""
    names = sorted(
        n
        for n in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, n))
        and (n.startswith("tokenizer") or n in TOKENIZER_FILES or n.endswith(TOKENIZER_SUFFIXES))
    )
    try:
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
            named = isinstance(json.load(f).get("tokenizer_class"), str)
    except (OSError, ValueError, AttributeError):
        named = False
    if not named and os.path.isfile(os.path.join(folder, "config.json")):
        names.append("config.json")
    return [os.path.join(folder, n) for n in names]


def tokenizer_fingerprint(path: str) -> str:
    """What identifies a model's tokenizer: its files' content in a model folder (new weights beside
    the same tokenizer leave it unchanged), else the name (a hub id)."""
    if not os.path.isdir(path):
        return model_fingerprint(path)
    files = tokenizer_files(path)
    found = fingerprints(files)
    return f"{path}@tokenizer@" + combine((os.path.basename(p), found[p]) for p in files)

"""Files that appear complete or not at all, locks shared by processes (and, on most
cluster filesystems, by nodes), and where miniplm keeps files between runs.

A worker killed at any point leaves nothing half-written that a rerun could
mistake for finished work: everything is written under a temporary name in
the same folder, flushed, then renamed over the final name. Files get the
permissions of any new file (0666 less the umask), so teammates sharing a
run directory can read them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_next_to(path)
    try:
        yield Path(tmp)
        # flush to disk before the rename, so a node that crashes cannot leave a
        # complete-looking name over empty content
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _new_file_next_to(path: Path) -> Path:
    """An empty file with a fresh temporary name in `path`'s folder. Created with mode 0666 so the
    umask (and a default ACL) applies as to any new file; mkstemp would make it 0600."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def new_folder_mode() -> int:
    """The mode a new folder gets under the current umask (read without changing it where Linux
    says it in /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o777 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o777 & ~mask


def follow_umask(folder: str | os.PathLike) -> None:
    """Give `folder` and everything in it the modes of new files and folders under the umask.
    For folders written by libraries that save through a private temporary file (transformers'
    save_pretrained leaves model.safetensors 0600, mkdtemp a folder 0700)."""
    folder_mode = new_folder_mode()
    file_mode = folder_mode & 0o666
    for root, _, files in os.walk(folder):
        os.chmod(root, folder_mode)
        for name in files:
            if not os.path.islink(path := os.path.join(root, name)):
                os.chmod(path, file_mode)


def move_into(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move every file of folder `src` to the same place under `dst` (each rename replaces one file
    whole), then remove `src`. Files in `dst` that `src` does not have stay: a user's own files in
    a folder miniplm writes into are not its to delete."""
    src, dst = Path(src), Path(dst)
    for root, _, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(os.path.join(root, name), target / name)
    shutil.rmtree(src)


def cache_dir() -> Path:
    """Where miniplm keeps files between runs: converted models, content fingerprints."""
    return Path(os.environ.get("MINIPLM_CACHE", Path.home() / ".cache" / "miniplm"))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class LockHeld(RuntimeError):
    """Another process holds the lock; `holder` is what it wrote there (its pid and host)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path}: held by {holder}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def held_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock held for the block, taken without waiting: LockHeld when another
    process has it. The holder writes its pid and host in the file, for the one refused to read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        f = open(path, "a+")
    except PermissionError:
        f = open(path)  # a teammate's lock file: flock needs no write access, only the note is not written
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise LockHeld(path, f.read().strip() or "another process") from None
        try:
            if f.writable():
                f.truncate(0)
                f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock held for the block (flock: works across processes and, on most
    cluster filesystems, across nodes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

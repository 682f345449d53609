"""Progress inside a shard, one finished request at a time: requests to a server finish in any order,
so each answer is appended to a journal as it arrives and a restarted worker sends only the requests
the journal lacks (never one that finished).

The journal is a JSON-lines file in the shard's scratch folder. A worker killed while writing leaves
at most its last line cut short; that line is dropped when the journal is read, and its request
is sent again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Hashable

from miniplm.batch_checkpoints import start_folder

FILE = "requests.jsonl"


def _key(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value


class RequestJournal:
    """Finished requests by key (a JSON value: a string, a number or a list of them)."""

    def __init__(self, folder: Path, environment: str):
        start_folder(folder, environment, FILE)
        self.path = folder / FILE
        self.done: dict[Hashable, dict] = {}
        self._read()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _read(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # a last line without its newline was cut short
        for line in whole.splitlines():
            entry = json.loads(line)
            self.done[_key(entry.pop("key"))] = entry
        if len(whole) < len(data):
            os.truncate(self.path, len(whole))

    def add(self, key: Any, result: dict) -> None:
        """Record a finished request (one write, so a kill leaves whole lines and at most one cut)."""
        os.write(self._fd, (json.dumps({"key": key, **result}) + "\n").encode())
        self.done[_key(key)] = result

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "RequestJournal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

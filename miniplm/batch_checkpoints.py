"""Progress inside a shard: results of consecutive batches saved as they are computed, so a
worker killed mid-shard resumes at the first batch not saved.

The folder also records the numeric environment (device, dtypes, attention
kernel, torch version) the batches were computed in; checkpoints from another
environment are discarded rather than mixed into one shard.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from miniplm.files import atomic_path, atomic_write_text


class BatchCheckpoints:
    """Rows of results, keyed by (doc, start), in files `batches-FIRST-LAST.parquet`."""

    def __init__(self, folder: Path, environment: str):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        env_file = folder / "environment.txt"
        if env_file.exists() and env_file.read_text() != environment:
            print(f"{folder.name}: checkpoints were computed on {env_file.read_text()!r}, "
                  f"now {environment!r}; computing the shard again", file=sys.stderr)
            for f in folder.glob("batches-*.parquet"):
                f.unlink()
        if not env_file.exists() or env_file.read_text() != environment:
            atomic_write_text(env_file, environment)

    def load(self) -> tuple[int, dict[tuple[int, int], dict]]:
        """(the first batch not saved, the saved rows by (doc, start))."""
        done, results = 0, {}
        for f in sorted(self.folder.glob("batches-*.parquet")):
            first, last = (int(x) for x in f.stem.split("-")[1:3])
            try:
                rows = pq.read_table(f).to_pylist() if first == done else None
            except (OSError, pa.ArrowException):
                rows = None  # damaged by a crash of the machine, not the process
            if rows is None:
                for later in sorted(self.folder.glob("batches-*.parquet")):
                    if int(later.stem.split("-")[1]) >= first:
                        later.unlink()
                break
            for row in rows:
                results[(row.pop("doc"), row.pop("start"))] = row
            done = last + 1
        return done, results

    def save(self, first: int, last: int, rows: list[dict]) -> None:
        with atomic_path(self.folder / f"batches-{first:06d}-{last:06d}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)

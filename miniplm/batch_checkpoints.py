"""Progress inside a shard: results of consecutive batches saved as they are computed, so a
worker killed mid-shard resumes at the first batch not saved.

The folder also records the numeric environment (device, dtypes, attention
kernel, torch version) the batches were computed in; checkpoints from another
environment are discarded rather than mixed into one shard.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from miniplm.files import atomic_path, atomic_write_text


def start_folder(folder: Path, environment: str, results: str) -> None:
    """Make a shard's progress folder, or keep it when its results (files matching the glob `results`)
    were computed in the same environment; results from another are deleted with a word."""
    folder.mkdir(parents=True, exist_ok=True)
    env_file = folder / "environment.txt"
    if env_file.exists() and env_file.read_text() != environment:
        print(
            f"{folder.name}: checkpoints were computed on {env_file.read_text()!r}, "
            f"now {environment!r}; computing the shard again",
            file=sys.stderr,
        )
        for f in folder.glob(results):
            f.unlink()
    if not env_file.exists() or env_file.read_text() != environment:
        atomic_write_text(env_file, environment)


class BatchCheckpoints:
    """Results of consecutive batches in files `batches-FIRST-LAST.parquet`: tables, or rows keyed
    by (doc, start)."""

    def __init__(self, folder: Path, environment: str):
        self.folder = folder
        start_folder(folder, environment, "batches-*.parquet")

    def saved(self) -> tuple[int, list[Path]]:
        """(the first batch not saved, the files of the batches before it, in order). A file that
        does not follow on from the one before, or cannot be read, is deleted with all after it."""
        done, files = 0, []
        found = sorted(self.folder.glob("batches-*.parquet"))
        for i, f in enumerate(found):
            first, last = (int(x) for x in f.stem.split("-")[1:3])
            ok = first == done
            try:
                if ok:
                    pq.read_metadata(f)  # a file cut short by a crash of the machine has no footer
            except (OSError, pa.ArrowException):
                ok = False
            if not ok:
                for later in found[i:]:
                    later.unlink()
                break
            files.append(f)
            done = last + 1
        return done, files

    def load_tables(self) -> tuple[int, list[pa.Table]]:
        """(the first batch not saved, the saved tables in batch order)."""
        done, files = self.saved()
        return done, [pq.read_table(f) for f in files]

    def save_table(self, first: int, last: int, table: pa.Table) -> Path:
        """Save the results of batches first..last (inclusive); the file."""
        path = self.folder / f"batches-{first:06d}-{last:06d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    def load(self) -> tuple[int, dict[tuple[int, int], dict]]:
        """(the first batch not saved, the saved rows by (doc, start))."""
        done, tables = self.load_tables()
        results = {}
        for table in tables:
            for row in table.to_pylist():
                results[(row.pop("doc"), row.pop("start"))] = row
        return done, results

    def save(self, first: int, last: int, rows: list[dict]) -> None:
        self.save_table(first, last, pa.Table.from_pylist(rows))

    def keep(
        self, results: Iterable[Any], first: int, total: int, every: int, save: Callable[[int, int, list[Any]], None]
    ) -> None:
        """The in-shard loop of every resumable stage: take the results of batches first, first + 1,
        ... (of `total`) as they are computed and hand them to `save(first, last, results)` in runs
        of `every` batches, the last run with what is left."""
        pending: list[Any] = []
        start = first
        for b, result in enumerate(results, start=first):
            pending.append(result)
            if b + 1 - start >= every or b + 1 == total:
                save(start, b, pending)
                pending, start = [], b + 1

    def save_rows(self, first: int, last: int, batches: list[list[dict]], into: dict[tuple[int, int], dict]) -> None:
        """Save batches of rows keyed by (doc, start), then add them to `into` by that key."""
        rows = [row for batch in batches for row in batch]
        self.save(first, last, rows)
        for row in rows:
            into[(row.pop("doc"), row.pop("start"))] = row

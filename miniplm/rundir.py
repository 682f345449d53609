"""The run directory: where each stage's files live, the manifest, atomic writes,
completion markers, and which worker owns which shard.

Everything a stage writes appears complete or not at all (temp name, then
rename), so a worker killed at any point leaves nothing half-written that a
rerun could mistake for finished work.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

SPLITS = ("main", "reference", "heldout")


class StageError(RuntimeError):
    """A stage that cannot go on (bad input under on_error: fail, ...); the message says where."""


# ---------------------------------------------------------------- atomic files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


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


# ---------------------------------------------------------------- shard ownership


@dataclass(frozen=True)
class Worker:
    """This process's place among the workers sharing a stage."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"worker index {self.index} is not in 0..{self.count - 1}")

    def owns(self, shard_index: int) -> bool:
        return shard_index % self.count == self.index

    def owned(self, n_shards: int) -> list[int]:
        return list(range(self.index, n_shards, self.count))


def resolve_worker(index: int | None = None, count: int | None = None, env: Mapping[str, str] | None = None) -> Worker:
    """Work out which worker this is: explicit flags, else a SLURM array task, else torchrun ranks.

    SLURM array ids need not start at 0 (`--array=3-7`), so the index is
    counted from SLURM_ARRAY_TASK_MIN.
    """
    env = os.environ if env is None else env
    if index is not None or count is not None:
        if index is None or count is None:
            raise ValueError("--worker and --num-workers go together")
        return Worker(index, count)
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return Worker(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
    if "RANK" in env and "WORLD_SIZE" in env:
        return Worker(int(env["RANK"]), int(env["WORLD_SIZE"]))
    return Worker()


# ---------------------------------------------------------------- the directory


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunDir:
    """Paths inside RUN_DIR and the manifest that records each stage's state."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # paths
    @property
    def job_file(self) -> Path:
        return self.root / "job.yaml"

    @property
    def manifest_file(self) -> Path:
        return self.root / "manifest.json"

    @property
    def docs(self) -> Path:
        return self.root / "docs"

    def doc_shard(self, split: str, index: int) -> Path:
        return self.docs / split / f"shard-{index:05d}.parquet"

    def doc_shards(self, split: str) -> list[Path]:
        return sorted((self.docs / split).glob("shard-*.parquet"))

    def work(self, stage: str) -> Path:
        """Scratch space for a stage's unfinished work; removed when the stage is done."""
        return self.root / "work" / stage

    def remove_work(self, stage: str) -> None:
        shutil.rmtree(self.work(stage), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / "work").rmdir()  # only once no stage has scratch left

    def marker(self, stage: str, key: str) -> Path:
        return self.root / "markers" / stage / f"{key}.done"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # completion markers
    def mark_done(self, stage: str, key: str, config_hash: str) -> None:
        atomic_write_text(self.marker(stage, key), config_hash + "\n")

    def is_done(self, stage: str, key: str, config_hash: str) -> bool:
        try:
            return self.marker(stage, key).read_text().strip() == config_hash
        except FileNotFoundError:
            return False

    def clear_markers(self, stage: str) -> None:
        shutil.rmtree(self.root / "markers" / stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / "markers").rmdir()

    # manifest
    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_file.read_text())
        except FileNotFoundError:
            return {"stages": {}}

    def stage_state(self, stage: str) -> dict[str, Any]:
        return self.read_manifest()["stages"].get(stage, {})

    def update_stage(self, stage: str, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the stage's manifest entry (read-modify-write under a lock,
        since several workers may finish at once)."""
        with file_lock(self.root / ".manifest.lock"):
            manifest = self.read_manifest()
            entry = manifest["stages"].setdefault(stage, {})
            entry.update(fields)
            atomic_write_json(self.manifest_file, manifest)
            return entry

    def start_stage(self, stage: str, config_hash: str) -> None:
        self.update_stage(stage, state="running", config_hash=config_hash, started=_now(), finished=None)

    def finish_stage(self, stage: str, counts: dict[str, Any]) -> None:
        self.update_stage(stage, state="done", counts=counts, finished=_now())

    def fail_stage(self, stage: str, error: str) -> None:
        self.update_stage(stage, state="failed", error=error, finished=_now())

    # a stage's life
    def open_stage(self, stage: str, config_hash: str, job_yaml: str, outputs: list[Path], *, force: bool) -> bool:
        """Begin (or rejoin) a stage; True when its work is already done and nothing is left to do.

        Work done under another config is never mixed with new work: it is
        removed with `force`, and refused without. `force` also redoes a
        finished or failed stage; a running one with the same config is joined.
        """
        from miniplm.config import ConfigError

        state = self.stage_state(stage)
        if state and state.get("config_hash") != config_hash:
            if not force:
                raise ConfigError(
                    f"{self.root}: the {stage} stage there ran with a different config "
                    f"({state.get('config_hash')}, now {config_hash}); use another run_dir, or --force to redo {stage}")
        elif force and state.get("state") == "running":
            # Workers of the same run (array tasks) all get the same flags: a late
            # one must join the work, not wipe what the others finished.
            force = False
        if force:
            for path in outputs:
                shutil.rmtree(path, ignore_errors=True)
        elif state.get("state") == "done":
            self.clean_scratch(stage)
            return True
        if force:
            self.clean_scratch(stage)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.job_file, job_yaml)
        if force or state.get("state") != "running":
            self.start_stage(stage, config_hash)
        return False

    def finish_once(self, stage: str, finalize: Callable[[], dict[str, Any]]) -> None:
        """Run `finalize` (which returns the stage's counts) in exactly one of the workers that
        find all work done, mark the stage done, and drop its scratch space."""
        with file_lock(self.work(stage) / "finalize.lock"):
            if self.stage_state(stage).get("state") != "done":
                self.finish_stage(stage, finalize())
        self.clean_scratch(stage)

    def clean_scratch(self, stage: str) -> None:
        self.remove_work(stage)
        self.clear_markers(stage)

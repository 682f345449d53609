"""The run directory: every path a stage reads or writes, named once, and the completion markers
of finished shards; the manifest that records each stage's state is miniplm/manifest.py.

RUN_DIR/
  job.yaml (the resolved job; job.resolved.yaml when job.yaml is the user's own), manifest.json
  records/STAGE.json (what each finished stage wrote: every file, its size and content hash)
  docs/{main,reference,heldout}/shard-NNNNN.parquet, docs/stats.json, docs/rejects.jsonl
  scores/shard-NNNNN.parquet
  ranked/run-NNNNN.{arrow,npy,json} (runs of score shards' units in rank order, for select's cut)
  selection/cut.json, selection/decisions/shard-NNNNN.parquet, selected/, selected-random/, selected-random-filtered/
  generated/NAME/shard-NNNNN.parquet
  tokens/NAME/shard-NNNNN.arrow, exports/NAME/ (another trainer's format, with provenance)
  teacher-logits/NAME/shard-NNNNN.arrow (top-k teacher log-probs, aligned with a token set's rows)
  models/NAME/, train/NAME/ (metrics, checkpoints)
  eval/models/NAME.json, eval/results.json, ...
  report/index.html (assembled from report-sections/)
  work/STAGE/ (scratch), markers/STAGE/KEY.done, logs/, slurm/
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from miniplm.files import atomic_write_text
from miniplm.manifest import JOB_HEADER, SETTINGS, UPSTREAM, ManifestError, StageManifest
from miniplm.paths import below

__all__ = ["JOB_HEADER", "SETTINGS", "SPLITS", "UPSTREAM", "ManifestError", "RunDir", "shard_name", "shards_in"]

SPLITS = ("main", "reference", "heldout")


def shard_name(index: int, suffix: str) -> str:
    return f"shard-{index:05d}{suffix}"


def shards_in(folder: Path, suffix: str = ".parquet") -> list[Path]:
    return sorted(folder.glob(f"shard-*{suffix}"))


class RunDir(StageManifest):
    """Paths inside RUN_DIR, and (miniplm/manifest.py) the manifest that records each stage's state."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ------------------------------------------------------------ paths
    @property
    def job_file(self) -> Path:
        """Where the resolved job is written: job.yaml, unless a job.yaml miniplm did not write is there."""
        own = self.root / "job.yaml"
        try:
            ours = own.read_text(encoding="utf-8").startswith(JOB_HEADER)
        except FileNotFoundError:
            return own
        except (OSError, UnicodeDecodeError):
            ours = False
        return own if ours else self.root / "job.resolved.yaml"

    @property
    def manifest_file(self) -> Path:
        return self.root / "manifest.json"

    @property
    def docs(self) -> Path:
        return self.root / "docs"

    @property
    def doc_stats(self) -> Path:
        return self.docs / "stats.json"

    @property
    def doc_rejects(self) -> Path:
        return self.docs / "rejects.jsonl"

    def doc_shard(self, split: str, index: int) -> Path:
        return self.docs / split / shard_name(index, ".parquet")

    def doc_shards(self, split: str) -> list[Path]:
        return shards_in(self.docs / split)

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def score_shard(self, index: int) -> Path:
        return self.scores / shard_name(index, ".parquet")

    @property
    def selection(self) -> Path:
        return self.root / "selection"

    @property
    def ranked(self) -> Path:
        return self.root / "ranked"

    def ranked_run(self, index: int, suffix: str = ".arrow") -> Path:
        """A run of score shards: units in rank order (.arrow), sorted teacher log-probs (.npy), totals (.json)."""
        return self.ranked / f"run-{index:05d}{suffix}"

    @property
    def cut(self) -> Path:
        return self.selection / "cut.json"

    @property
    def decisions(self) -> Path:
        """Every scored unit's numbers and fate, one file per score shard."""
        return self.selection / "decisions"

    def decisions_shard(self, index: int) -> Path:
        return self.decisions / shard_name(index, ".parquet")

    def selected(self, folder: str = "selected") -> Path:
        """A selection's document shards: `selected`, or a random control (`selected-random`,
        `selected-random-filtered`: config.RANDOM_CONTROLS)."""
        return self.root / folder

    def selected_shard(self, index: int, folder: str = "selected") -> Path:
        return self.selected(folder) / shard_name(index, ".parquet")

    def generated(self, name: str) -> Path:
        """A corpus the teacher wrote (generate stage): document shards with their prompts."""
        return below(self.root / "generated", name)

    def generated_shard(self, name: str, index: int) -> Path:
        return self.generated(name) / shard_name(index, ".parquet")

    def tokens(self, name: str) -> Path:
        return below(self.root / "tokens", name)

    def export(self, name: str) -> Path:
        """An export: the refined corpus in another trainer's format, with its provenance."""
        return below(self.root / "exports", name)

    def teacher_logits(self, name: str) -> Path:
        """A teacher_logits set: the teacher's top-k log-probs per position of a token set's rows."""
        return below(self.root / "teacher-logits", name)

    def model(self, name: str) -> Path:
        """A model this run trains (a student, or `reference`): a save_pretrained folder."""
        return below(self.root / "models", name)

    def training(self, name: str) -> Path:
        """A model's training metrics and checkpoints."""
        return below(self.root / "train", name)

    def metrics(self, name: str) -> Path:
        return self.training(name) / "metrics.jsonl"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def eval_result(self, name: str) -> Path:
        return below(self.eval / "models", name, ".json")

    @property
    def eval_results(self) -> Path:
        return self.eval / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_page(self) -> Path:
        return self.report / "index.html"

    @property
    def report_sections(self) -> Path:
        """The sections stages hand the report, which it assembles into the page."""
        return self.root / "report-sections"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def log_file(self) -> Path:
        """Where other libraries' messages go (unless --verbose)."""
        return self.logs / "miniplm.log"

    def launcher(self, name: str) -> Path:
        """A launcher's own files: rendered scripts, submissions, exit codes (`slurm/`)."""
        return self.root / name

    def work(self, stage: str) -> Path:
        """Scratch space for a stage's unfinished work; removed when the stage is done."""
        return below(self.root / "work", stage, parts=2)  # a stage, or a part of one: train/NAME

    def marker(self, stage: str, key: str) -> Path:
        return below(self.markers(stage), key, ".done")

    def markers(self, stage: str) -> Path:
        return below(self.root / "markers", stage, parts=2)

    # ------------------------------------------------------------ scratch and markers
    def remove_work(self, stage: str) -> None:
        shutil.rmtree(self.work(stage), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / "work").rmdir()  # only once no stage has scratch left

    def mark_done(self, stage: str, key: str, config_hash: str) -> None:
        atomic_write_text(self.marker(stage, key), config_hash + "\n")

    def is_done(self, stage: str, key: str, config_hash: str) -> bool:
        try:
            return self.marker(stage, key).read_text().strip() == config_hash
        except FileNotFoundError:
            return False

    def clear_markers(self, stage: str) -> None:
        shutil.rmtree(self.markers(stage), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / "markers").rmdir()

    def clean_scratch(self, stage: str) -> None:
        self.remove_work(stage)
        self.clear_markers(stage)

"""The run directory: every path a stage reads or writes, named once; the manifest that
records each stage's state; and the completion markers of finished shards.

RUN_DIR/
  job.yaml (the resolved job; job.resolved.yaml when job.yaml is the user's own), manifest.json
  records/STAGE.json (what each finished stage wrote: every file, its size and content hash)
  docs/{main,reference,heldout}/shard-NNNNN.parquet, docs/stats.json, docs/rejects.jsonl
  scores/shard-NNNNN.parquet
  ranked/run-NNNNN.{arrow,npy,json} (runs of score shards' units in rank order, for select's cut)
  selection/cut.json, selection/decisions/shard-NNNNN.parquet, selected/, selected-random/, selected-random-filtered/
  generated/NAME/shard-NNNNN.parquet
  tokens/NAME/shard-NNNNN.arrow
  teacher-logits/NAME/shard-NNNNN.arrow (top-k teacher log-probs, aligned with a token set's rows)
  models/NAME/, train/NAME/ (metrics, checkpoints)
  eval/models/NAME.json, eval/results.json, ...
  report/index.html (assembled from report-sections/)
  work/STAGE/ (scratch), markers/STAGE/KEY.done, logs/, slurm/
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from miniplm import records
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_write_json, atomic_write_text, file_lock
from miniplm.paths import below

SPLITS = ("main", "reference", "heldout")
SETTINGS = "settings"  # the label, among a stage's inputs, of its own job sections
UPSTREAM = "::"  # in an input's label, between an earlier stage and the folders read from it
JOB_HEADER = "# The job as miniplm last ran it in this folder (overrides applied). miniplm rewrites this file.\n"


class ManifestError(StageError):
    """manifest.json cannot be read; the message names it and says how to recover."""


def shard_name(index: int, suffix: str) -> str:
    return f"shard-{index:05d}{suffix}"


def shards_in(folder: Path, suffix: str = ".parquet") -> list[Path]:
    return sorted(folder.glob(f"shard-*{suffix}"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunDir:
    """Paths inside RUN_DIR and the manifest that records each stage's state."""

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

    # ------------------------------------------------------------ the manifest
    def read_manifest(self) -> dict[str, Any]:
        try:
            text = self.manifest_file.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return {"stages": {}}
        except (OSError, UnicodeDecodeError) as e:
            problem = f"unreadable ({e})"
        else:
            try:
                manifest = json.loads(text)
            except ValueError as e:
                problem = f"not valid JSON ({e})" if text.strip() else "empty"
            else:
                stages = manifest.get("stages") if isinstance(manifest, dict) else None
                if isinstance(stages, dict) and all(isinstance(v, dict) for v in stages.values()):
                    return manifest
                problem = 'not a manifest (one is {"stages": {"prepare": {...}, ...}})'
        f = self.manifest_file
        raise ManifestError(
            f"{f}: the run's manifest is damaged: {problem}. It records which stages finished and what they "
            f"wrote, so nothing can run here without it. To recover, put back a copy of it if you have one; "
            f"otherwise move it away (mv {f} {f}.damaged) and run the stages again: each one redoes its work "
            f"and replaces its outputs (or start over in another run_dir)."
        )

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

    def start_stage(
        self,
        stage: str,
        config_hash: str,
        *,
        inputs: dict[str, str] | None = None,
        outputs: list[str] | None = None,
        preexisting: dict[str, list[int]] | None = None,
        command: str | None = None,
        sources: dict[str, list] | None = None,
    ) -> None:
        """Record a stage as running: its config hash, the fingerprints of its inputs and where its
        files and models are (inputs.sources), the outputs it owns (run-directory relative) and the
        files already there that are not its own."""
        self.update_stage(
            stage,
            state="running",
            config_hash=config_hash,
            inputs=inputs or {},
            sources=sources or {},
            outputs=outputs or [],
            preexisting=preexisting or {},
            command=command,
            started=_now(),
            finished=None,
        )

    def finish_stage(self, stage: str, counts: dict[str, Any], *, show_progress: bool = False) -> None:
        """Record what the stage wrote (records/STAGE.json), then mark it done with its counts."""
        entry = self.stage_state(stage)
        written = records.write(
            self.root, stage, entry.get("outputs", []), entry.get("preexisting", {}), show_progress=show_progress
        )
        self.update_stage(stage, state="done", counts=counts, written=written, finished=_now())

    def fail_stage(self, stage: str, error: str) -> None:
        self.update_stage(stage, state="failed", error=error, finished=_now())

    def write_job(self, job_yaml: str) -> None:
        """The resolved job, with a first line that marks the file as miniplm's (see `job_file`)."""
        atomic_write_text(self.job_file, JOB_HEADER + job_yaml)

    # ------------------------------------------------------------ a stage's life
    def open_stage(
        self,
        stage: str,
        config_hash: str,
        job_yaml: str,
        outputs: list[Path],
        *,
        force: bool,
        inputs: dict[str, str] | None = None,
        command: str | None = None,
        sources: dict[str, list] | None = None,
    ) -> bool:
        """Begin (or rejoin) a stage; True when its work is already done and nothing is left to do.

        Work done under another config or on other inputs is never mixed with new work: it is
        removed with `force`, and refused without. `force` also redoes a finished or failed stage,
        deleting only what the manifest says it wrote; a running one with the same config is joined.
        A finished stage whose outputs were deleted or changed since is an error.
        """
        state = self.stage_state(stage)
        owned = [Path(p).relative_to(self.root).as_posix() for p in outputs]
        command = command or f"miniplm {stage}"
        if state and state.get("config_hash") != config_hash:
            if not force:
                changed = _what_changed(state.get("inputs", {}), inputs or {})
                raise ConfigError(
                    f"{self.root}: the {stage} stage there ran with a different config "
                    f"({state.get('config_hash')}, now {config_hash}{'; ' + changed if changed else ''}); "
                    f"use another run_dir, or --force to redo {stage}"
                )
        elif force and state.get("state") == "running":
            # Workers of the same run (array tasks) all get the same flags: a late
            # one must join the work, not wipe what the others finished.
            force = False
        if force:
            records.delete_written(self.root, stage, state, owned)
            self.clean_scratch(stage)
            state = {}
        elif state.get("state") == "done":
            damaged = records.problems(self.root, stage, state)
            if damaged:
                more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
                raise StageError(
                    f"{stage} is done, but what it wrote changed since: {damaged[0]}{more}; "
                    f"run `{records.rerun(state, stage)} --force` to redo {stage}"
                )
            self.clean_scratch(stage)
            return True
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_job(job_yaml)
        if state.get("state") != "running":
            preexisting = state.get("preexisting", {}) if state else records.snapshot(self.root, owned)
            self.start_stage(
                stage,
                config_hash,
                inputs=inputs,
                outputs=owned,
                preexisting=preexisting,
                command=command,
                sources=sources,
            )
        return False

    def finish_once(self, stage: str, finalize: Callable[[], dict[str, Any]], *, show_progress: bool = False) -> None:
        """Run `finalize` (which returns the stage's counts) in exactly one of the workers that
        find all work done, record what the stage wrote, mark it done, and drop its scratch space."""
        with file_lock(self.work(stage) / "finalize.lock"):
            if self.stage_state(stage).get("state") != "done":
                self.finish_stage(stage, finalize(), show_progress=show_progress)
        self.clean_scratch(stage)


def _what_changed(before: dict[str, str], now: dict[str, str]) -> str:
    """Which of a stage's inputs differ, in words."""
    words = []
    for label in dict.fromkeys([*before, *now]):
        if before.get(label) == now.get(label):
            continue
        if label == SETTINGS:
            words.append("its settings in the job")
        elif UPSTREAM in label:
            stage, _, folders = label.partition(UPSTREAM)
            words.append(f"the output of {stage}" + (f" in {folders}" if folders else "") + " (redone since)")
        else:
            words.append(label)
    return "changed: " + ", ".join(words) if words else ""

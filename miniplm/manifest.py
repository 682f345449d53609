"""The manifest of a run directory (manifest.json): each stage's state, config hash, the
fingerprints of its inputs and the outputs it owns; and a stage's life through it (open, finish
once, fail). `RunDir` (miniplm/rundir.py) holds the paths this reads and writes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from miniplm import records
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_write_json, atomic_write_text, file_lock

SETTINGS = "settings"  # the label, among a stage's inputs, of its own job sections
UPSTREAM = "::"  # in an input's label, between an earlier stage and the folders read from it
JOB_HEADER = "# The job as miniplm last ran it in this folder (overrides applied). miniplm rewrites this file.\n"


class ManifestError(StageError):
    """manifest.json cannot be read; the message names it and says how to recover."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class StageManifest:
    """The manifest's part of RunDir: what it needs of the paths is `root`, `manifest_file`,
    `job_file`, `work` and `clean_scratch`."""

    root: Path

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

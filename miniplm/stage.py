"""What a stage is, and the one life cycle every sharded stage runs through.

A stage is one object declared in its own module: its name and help, what
kind of work it is (an array of shards any worker may take, or the ranks of
one distributed job), the config sections its outputs depend on, its shards,
how it runs one shard, how it finishes and how it describes its counts. The
registry (miniplm/stages.py) lists the stages in pipeline order; the CLI,
`run`, `slurm`, `status` and the plan read it and nothing else.

`run_sharded` is the life cycle of an array stage, written once: set up the
part (`setup`: checks, and what its hooks share), fingerprint what it reads
(`reads`: earlier stages' outputs checked against their records, files and
models by content), open the stage (refusing work
done under another config or on other inputs), skip finished shards, run the
rest, mark each one done, finish once under a lock when every shard is done
(checking that the inputs did not change meanwhile, and recording what the
stage wrote), and record a failure in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from miniplm.errors import ConfigError, StageError
from miniplm.inputs import Input, resolve, sources
from miniplm.jobfile import dump_job
from miniplm.records import rerun
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.hashing import config_hash
from miniplm.schema.job import JobConfig
from miniplm.workers import Worker

Kind = Literal["array", "ranks"]


@dataclass(frozen=True)
class Step:
    """What one command runs: a whole array stage, or one part of a ranks stage (a student)."""

    name: str  # as in the manifest and in slurm.stages: prepare, score, ..., train/NAME
    stage: str  # the stage (and `miniplm` subcommand) that runs it
    kind: Kind
    only: str | None = None  # the part it is restricted to (train: the student)


@dataclass
class Part:
    """One manifest entry of a stage (`score`, `tokenize/selected`), with what it is about."""

    name: str
    item: Any = None  # the job's entry this part is for: a token set, a student
    command: str | None = None  # the command that redoes it, when not `miniplm NAME`


@dataclass
class StageRun:
    """A part of a stage as one worker runs it: everything the stage's hooks need."""

    stage: "Stage"
    job: JobConfig
    rd: RunDir
    part: Part
    worker: Worker
    show_progress: bool
    config_hash: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # fingerprints of what it reads, by label
    context: Any = None  # what the stage's `setup` made ready for its other hooks (its own dataclass)

    @property
    def name(self) -> str:
        return self.part.name

    def is_done(self, key: str) -> bool:
        return self.rd.is_done(self.name, key, self.config_hash)

    def mark_done(self, key: str) -> None:
        self.rd.mark_done(self.name, key, self.config_hash)


class Stage:
    """A step of the pipeline. Subclasses fill in the class attributes and the hooks they need."""

    name: str = ""
    summary: str = ""  # one line, for `miniplm --help`
    description: str = ""  # a paragraph, for `miniplm NAME --help`
    kind: Kind = "array"
    sections: tuple[str, ...] = ("seed",)  # the job sections its outputs depend on
    unit: str = "shards"  # what `status` calls its shards
    only: str | None = None  # what `--only NAME` picks (a token set, a student); None: no --only

    # ------------------------------------------------------------ the plan
    def applies(self, job: JobConfig) -> bool:
        """Whether the job has this stage at all."""
        return True

    def steps(self, job: JobConfig) -> list[Step]:
        """One step; one per part for a stage with parts (`tokenize/selected`, ...), so that a launcher
        chains each part after what it reads only and a failed part holds up only what reads it."""
        if not self.applies(job):
            return []
        if self.only is None:
            return [Step(self.name, self.name, self.kind)]
        return [Step(part.name, self.name, self.kind, only=part.item.name) for part in self.parts(job)]

    def entries(self, job: JobConfig, step: Step) -> list[str]:
        """The manifest entries that together make up a step."""
        return [part.name for part in self.parts(job, step.only)]

    def parts(self, job: JobConfig, only: str | None = None) -> list[Part]:
        return [Part(self.name)]

    def shard_keys(self, job: JobConfig, rd: RunDir, step: Step) -> dict[str, list[str]] | None:
        """Per manifest entry, the marker keys of its shards; None while they cannot be known."""
        return None

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        """What a part reads, known from the job alone (nothing loaded): earlier stages' outputs
        (`Upstream`s named in miniplm/outputs.py, checked against their records), files (`Files`) and
        models (`Model`) by content, settings (strings). Its outputs depend on exactly these: they are
        fingerprinted into its config hash, and the launchers' chains and each student's compute are
        derived from the `Upstream`s."""
        return []

    def spends_compute(self, entry: str) -> bool:
        """Whether a manifest entry of the stage runs a model, recording the FLOPs its readers are
        charged a share of."""
        return False

    def progress(self, job: JobConfig, rd: RunDir, step: Step) -> str:
        """How far a step without shards got, in words (`step 120`)."""
        return ""

    def slurm_arguments(self) -> str:
        """Extra command-line arguments for its SLURM array tasks."""
        return ""

    def check(self, job: JobConfig) -> None:
        """Raise ConfigError for a job this stage cannot run, before any work starts."""

    def config_hash(self, job: JobConfig, *extra: str) -> str:
        """The hash of the job sections its outputs depend on, with `extra` settings."""
        return config_hash(job, self.sections, *extra)

    def fingerprint(
        self,
        job: JobConfig,
        rd: RunDir,
        name: str,
        reads: list[Input],
        worker: Worker = Worker(),
        show_progress: bool = False,
    ) -> tuple[str, dict[str, str]]:
        """(config hash, the fingerprints of its inputs by label) of a part that reads `reads`."""
        settings = self.config_hash(job, *(r for r in reads if isinstance(r, str)))
        inputs = resolve(
            rd, reads, settings, reader=name, share=worker.index / worker.count, show_progress=show_progress
        )
        return config_hash(job, (), *(f"{label}={value}" for label, value in inputs.items())), inputs

    # ------------------------------------------------------------ running
    def run(
        self,
        job: JobConfig,
        worker: Worker = Worker(),
        *,
        only: str | None = None,
        force: bool = False,
        show_progress: bool = True,
    ) -> Any:
        raise NotImplementedError

    def describe(self, job: JobConfig, result: Any) -> list[str]:
        """What a finished run's result says, as lines for the terminal."""
        return [f"{self.name}: {result}"]

    def warnings(self, job: JobConfig, result: Any) -> list[str]:
        """What in a finished run's result a user should not miss (nothing kept, ...)."""
        return []

    def report(self, job: JobConfig, rd: RunDir) -> None:
        """Hand the report its sections again, from the finished stage's outputs (`miniplm report`)."""


class ShardedStage(Stage):
    """An array stage: each part is a list of shards any worker may take (see `run_sharded`)."""

    def run(
        self,
        job: JobConfig,
        worker: Worker = Worker(),
        *,
        only: str | None = None,
        force: bool = False,
        show_progress: bool = True,
    ) -> Any:
        parts = self.parts(job, only)
        results = {p.name: run_sharded(self, job, p, worker, force=force, show_progress=show_progress) for p in parts}
        return results[self.name] if list(results) == [self.name] else results

    def shard_keys(self, job: JobConfig, rd: RunDir, step: Step) -> dict[str, list[str]] | None:
        keys = {}
        for part in self.parts(job, step.only):
            names = self.planned_shards(job, rd, part)
            if names is None:
                return None
            keys[part.name] = names
        return keys

    # ------------------------------------------------------------ hooks, in the order they are called
    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        """The part's shard keys as far as they can be known before it runs (None: not yet)."""
        return None

    def run_dir(self, job: JobConfig, part: Part) -> RunDir:
        """The run directory the part reads and writes through (a selection on the proxy's scores
        sees its own folders)."""
        return RunDir(job.run_dir)

    def setup(self, run: StageRun) -> Any:
        """Check what the part needs before any work (raise ConfigError or StageError naming the
        command to run first) and load what its hooks share (a tokenizer, a backend): returns the
        stage's own context object, which the other hooks find in `run.context`."""
        return None

    def outputs(self, run: StageRun) -> list[Path]:
        """The files and folders under RUN_DIR it writes. What it wrote there is recorded when it
        finishes; `--force` deletes that, and nothing else there."""
        return []

    def shards(self, run: StageRun) -> list[str]:
        """The part's shard keys, in order; shard i belongs to worker i % count."""
        raise NotImplementedError

    def global_step(self, run: StageRun) -> None:
        """Work done once, by the first worker to get here, before any shard (select's decisions)."""

    def run_shards(self, run: StageRun, todo: list[int]) -> None:
        """Run this worker's unfinished shards, marking each done as it is written."""
        from tqdm import tqdm

        keys = self.shards(run)
        unit = self.unit.split()[-1].removesuffix("s")  # shard, model, unit
        for i in tqdm(todo, desc=run.name.replace("/", " "), unit=unit, disable=not run.show_progress):
            if run.rd.stage_state(run.name).get("state") == "done":
                break  # a late worker: the others finished the part meanwhile
            self.run_shard(run, i)
            run.mark_done(keys[i])

    def run_shard(self, run: StageRun, index: int) -> None:
        raise NotImplementedError

    def finish(self, run: StageRun) -> dict:
        """Once every shard is done, in exactly one worker: combine, check, return the counts."""
        return {}

    def result(self, run: StageRun) -> Any:
        """What `run` returns for a finished part: its manifest counts."""
        return run.rd.stage_state(run.name)["counts"]


def run_sharded(
    stage: ShardedStage, job: JobConfig, part: Part, worker: Worker, *, force: bool = False, show_progress: bool = True
) -> Any:
    """This worker's share of one part of an array stage. Returns the part's result once every
    shard is done (by this worker or others), None while other workers still have shards to do."""
    rd = stage.run_dir(job, part)
    run = StageRun(stage, job, rd, part, worker, show_progress)
    run.context = stage.setup(run)
    reads = stage.reads(job, part)
    run.config_hash, run.inputs = stage.fingerprint(job, rd, run.name, reads, worker, show_progress)
    if rd.open_stage(
        run.name,
        run.config_hash,
        dump_job(job),
        stage.outputs(run),
        force=force,
        inputs=run.inputs,
        command=part.command,
        sources=sources(reads),
    ):
        return stage.result(run)
    try:
        _global_step_once(stage, run)
        keys = stage.shards(run)
        todo = [i for i in worker.owned(len(keys)) if not run.is_done(keys[i])]
        if todo:
            stage.run_shards(run, todo)
        if rd.stage_state(run.name).get("state") != "done":
            if not all(run.is_done(key) for key in keys):
                return None
            rd.finish_once(run.name, lambda: _finish(stage, run, reads), show_progress=show_progress)
    except Exception as e:  # anything but an interrupt: the manifest must not say running
        rd.fail_stage(run.name, str(e))
        raise
    return stage.result(run)


def _finish(stage: ShardedStage, run: StageRun, reads: list[Input]) -> dict:
    """The part's counts, once its inputs are found unchanged since it started: a file edited or a
    model replaced mid-run would leave outputs made from two versions."""
    now = stage.fingerprint(run.job, run.rd, run.name, reads, run.worker)[1]
    changed = [label for label in run.inputs if now.get(label) != run.inputs[label]]
    if changed:
        raise StageError(
            f"{run.rd.root}: what {run.name} reads changed while it ran ({', '.join(changed)}); "
            f"run `{rerun(run.rd.stage_state(run.name), run.name)} --force` to redo it"
        )
    return stage.finish(run)


GLOBAL_STEP = "global-step"


def _global_step_once(stage: ShardedStage, run: StageRun) -> None:
    if type(stage).global_step is ShardedStage.global_step:
        return
    from miniplm.files import file_lock

    with file_lock(run.rd.work(run.name) / "global-step.lock"):
        if run.is_done(GLOBAL_STEP) or run.rd.stage_state(run.name).get("state") == "done":
            return
        stage.global_step(run)
        run.mark_done(GLOBAL_STEP)


def doc_shard_keys(rd: RunDir, split: str = "main") -> list[str] | None:
    """The shard keys of a split of the prepared documents; None until prepare is done."""
    if rd.stage_state("prepare").get("state") != "done":
        return None
    return [shard_name(i, "") for i in range(len(rd.doc_shards(split)))]


def only_one(label: str, names: list[str], only: str | None, stage: str) -> list[str]:
    """The names `--only` keeps: all of them, or the one it names (a ConfigError otherwise)."""
    if only is None:
        return names
    if only not in names:
        raise ConfigError(f"{stage}: no {label} {only!r} in the job ({label}s: {', '.join(names) or 'none'})")
    return [only]


PIPELINE: list[Stage] = []
"""Every stage, in pipeline order. The registry (miniplm/stages.py) fills it; code below the stages
that walks the whole pipeline (each student's compute) reads it here."""


def registered() -> list[Stage]:
    if not PIPELINE:
        raise RuntimeError("no stages registered: import miniplm.stages first")
    return PIPELINE

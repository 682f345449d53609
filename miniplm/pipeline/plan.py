"""The pipeline's steps for a job, and what of each is finished, read from the run directory.

A step is what one command runs: an array stage (prepare, score, select,
tokenize, eval), whose shards any worker may take, or a step of a ranks stage
(train-reference, one train step per student) that runs as the ranks of one
distributed job. The steps come from the stage registry, in its order;
`miniplm run`, `miniplm slurm` and `miniplm status` all walk the same list.
"""

from __future__ import annotations

from miniplm.errors import ConfigError
from miniplm.inputs import Upstream
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.stage import Stage, Step
from miniplm.stages import STAGES, get


def steps(job: JobConfig) -> list[Step]:
    """The job's steps in the order they must run: the registry's order, except that a step comes
    after every step it reads from (a stage registered late may feed an earlier one's part)."""
    return ordered(job)[0]


def ordered(job: JobConfig) -> tuple[list[Step], dict[str, list[str]]]:
    """The job's steps in the order they must run, and per step the steps it reads from, in that order."""
    listed = [step for stage in STAGES for step in stage.steps(job)]
    reads = dependencies(job, listed)
    out: list[Step] = []
    placed: set[str] = set()
    while len(out) < len(listed):
        step = next((s for s in listed if s.name not in placed and set(reads[s.name]) <= placed), None)
        if step is None:
            raise ConfigError(
                "the job's steps read from each other in a circle: "
                + ", ".join(s.name for s in listed if s.name not in placed)
            )
        out.append(step)
        placed.add(step.name)
    return out, {name: [s.name for s in out if s.name in names] for name, names in reads.items()}


def dependencies(job: JobConfig, steps_: list[Step]) -> dict[str, list[str]]:
    """Per step, the other steps it reads from (in the order given): those that write the outputs its
    parts read (each stage's `reads`, the `Upstream`s there)."""
    owner: dict[str, str] = {}
    for step in steps_:
        for entry in manifest_stages(job, step):
            owner.setdefault(entry, step.name)
    out: dict[str, list[str]] = {}
    for step in steps_:
        stage = stage_of(step)
        wanted = {
            owner.get(r.stage)
            for part in stage.parts(job, step.only)
            for r in stage.reads(job, part)
            if isinstance(r, Upstream)
        }
        out[step.name] = [s.name for s in steps_ if s.name in wanted and s.name != step.name]
    return out


def step_named(job: JobConfig, name: str) -> Step:
    for step in steps(job):
        if step.name == name:
            return step
    raise KeyError(name)


def stage_of(step: Step) -> Stage:
    return get(step.stage)


def manifest_stages(job: JobConfig, step: Step) -> list[str]:
    """The manifest entries that together make up a step."""
    return stage_of(step).entries(job, step)


def state(job: JobConfig, rd: RunDir, step: Step) -> str:
    """done, failed, running (started, not finished) or waiting (not started)."""
    states = [rd.stage_state(s).get("state") for s in manifest_stages(job, step)]
    if all(s == "done" for s in states):
        return "done"
    if "failed" in states:
        return "failed"
    return "running" if any(states) else "waiting"


def shard_count(job: JobConfig, rd: RunDir, step: Step) -> int | None:
    """How many shards (prepare: input units) an array step has; None while unknown."""
    keys = stage_of(step).shard_keys(job, rd, step)
    return None if keys is None else max((len(k) for k in keys.values()), default=0)


def pending_shards(job: JobConfig, rd: RunDir, step: Step) -> list[int] | None:
    """The shard indices of an array step not yet finished; None while unknown."""
    keys = stage_of(step).shard_keys(job, rd, step)
    if keys is None:
        return None
    pending: set[int] = set()
    for stage, names in keys.items():
        if rd.stage_state(stage).get("state") == "done":
            continue  # its markers are cleared once the stage is done
        current = rd.stage_state(stage).get("config_hash")  # markers of another config do not count
        pending.update(i for i, key in enumerate(names) if not rd.is_done(stage, key, current or ""))
    return sorted(pending)


def progress(job: JobConfig, rd: RunDir, step: Step) -> str:
    """How far a step without shards got, in words."""
    return stage_of(step).progress(job, rd, step)

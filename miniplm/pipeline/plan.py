"""The pipeline's steps for a job, and what of each is finished, read from the run directory.

A step is what one command runs: an array stage (prepare, score, select,
tokenize), whose shards any worker may take, or a training stage
(train-reference, one train step per student) that runs as the ranks of one
distributed job. `miniplm run`, `miniplm slurm` and `miniplm status` all
walk the same list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from miniplm.config import JobConfig, reference_token_set
from miniplm.rundir import RunDir


@dataclass(frozen=True)
class Step:
    name: str  # as in the manifest and in slurm.stages: prepare, score, ..., train/NAME
    command: str  # the `miniplm` subcommand that runs it
    kind: Literal["array", "ranks"]
    only: str | None = None  # train: the student


def steps(job: JobConfig) -> list[Step]:
    """The job's steps in the order they must run."""
    plan = [Step("prepare", "prepare", "array")]
    if job.reference is not None and job.reference.train is not None:
        plan.append(Step("train-reference", "train-reference", "ranks"))
    if job.teacher is not None and job.reference is not None:
        plan += [Step("score", "score", "array"), Step("select", "select", "array")]
    if job.tokenize:
        plan.append(Step("tokenize", "tokenize", "array"))
    plan += [Step(f"train/{s.name}", "train", "ranks", only=s.name) for s in job.students]
    if job.eval is not None:
        plan.append(Step("eval", "eval", "array"))  # its shards are the models
    return plan


def step_named(job: JobConfig, name: str) -> Step:
    for step in steps(job):
        if step.name == name:
            return step
    raise KeyError(name)


def manifest_stages(job: JobConfig, step: Step) -> list[str]:
    """The manifest entries that together make up a step."""
    if step.name == "tokenize":
        return [f"tokenize/{t.name}" for t in job.tokenize]
    if step.name == "train-reference":
        return [f"tokenize/{reference_token_set(job).name}", "train/reference"]
    return [step.name]


def state(job: JobConfig, rd: RunDir, step: Step) -> str:
    """done, failed, running (started, not finished) or waiting (not started)."""
    states = [rd.stage_state(s).get("state") for s in manifest_stages(job, step)]
    if all(s == "done" for s in states):
        return "done"
    if "failed" in states:
        return "failed"
    return "running" if any(states) else "waiting"


def _shard_keys(job: JobConfig, rd: RunDir, step: Step) -> list[tuple[str, list[str]]] | None:
    """Per manifest stage, the marker keys of its shards (prepare: its units); None while the
    shard count cannot be known (the documents are not prepared yet)."""
    if step.name == "prepare":
        from miniplm.corpus.prepare import plan_units

        return [("prepare", [u.key for u in plan_units(job.corpus)])]
    if step.name == "eval":
        from miniplm.evaluation.evaluate import targets

        return [("eval", [t.name for t in targets(job)])]
    if rd.stage_state("prepare").get("state") != "done":
        return None
    if step.name in ("score", "select"):
        return [(step.name, [f"shard-{i:05d}" for i in range(len(rd.doc_shards("main")))])]
    if step.name == "tokenize":
        out = []
        for t in job.tokenize:
            split = "main" if t.input.startswith("selected") else t.input  # one selected shard per main shard
            out.append((f"tokenize/{t.name}", [f"shard-{i:05d}" for i in range(len(rd.doc_shards(split)))]))
        return out
    raise ValueError(f"{step.name} is not an array step")


def shard_count(job: JobConfig, rd: RunDir, step: Step) -> int | None:
    """How many shards (prepare: input units) an array step has; None while unknown."""
    keys = _shard_keys(job, rd, step)
    return None if keys is None else max((len(k) for _, k in keys), default=0)


def pending_shards(job: JobConfig, rd: RunDir, step: Step) -> list[int] | None:
    """The shard indices of an array step not yet finished; None while unknown."""
    keys = _shard_keys(job, rd, step)
    if keys is None:
        return None
    pending: set[int] = set()
    for stage, names in keys:
        if rd.stage_state(stage).get("state") == "done":
            continue  # its markers are cleared once the stage is done
        current = rd.stage_state(stage).get("config_hash")  # markers of another config do not count
        pending.update(i for i, key in enumerate(names) if not rd.is_done(stage, key, current or ""))
    return sorted(pending)

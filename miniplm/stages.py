"""The stage registry: every stage, in pipeline order.

The CLI's subcommands, `miniplm run`, `miniplm slurm`, `miniplm status` and
the plan all read this list and nothing else. Adding a stage is one module
that declares it and one line here (or one `register` call, for a stage that
lives outside miniplm).
"""

from __future__ import annotations

from miniplm.corpus.prepare import STAGE as PREPARE
from miniplm.corpus.tokenize import STAGE as TOKENIZE
from miniplm.errors import ConfigError
from miniplm.evaluation.evaluate import STAGE as EVAL
from miniplm.export.export import STAGE as EXPORT
from miniplm.generation.generate import STAGE as GENERATE
from miniplm.models.prune import STAGE as PRUNE
from miniplm.proxy.proxy import STAGE as PROXY
from miniplm.schema.job import JobConfig
from miniplm.scoring.score import STAGE as SCORE
from miniplm.selection.rank import STAGE as RANK
from miniplm.selection.select import STAGE as SELECT
from miniplm.stage import PIPELINE, Stage
from miniplm.training.reference import STAGE as TRAIN_REFERENCE
from miniplm.training.teacher_logits import STAGE as TEACHER_LOGITS
from miniplm.training.train import STAGE as TRAIN

STAGES: list[Stage] = PIPELINE  # the list code below the stages reads (miniplm/stage.py)
STAGES += [
    PREPARE,
    TRAIN_REFERENCE,
    SCORE,
    PROXY,
    RANK,
    SELECT,
    GENERATE,
    PRUNE,
    TOKENIZE,
    EXPORT,
    TEACHER_LOGITS,
    TRAIN,
    EVAL,
]


def register(stage: Stage, *, after: str | None = None) -> Stage:
    """Add a stage to the pipeline, after the stage named `after` (default: at the end)."""
    if any(s.name == stage.name for s in STAGES):
        raise ValueError(f"a stage named {stage.name!r} is registered already")
    position = len(STAGES) if after is None else names().index(after) + 1
    STAGES.insert(position, stage)
    return stage


def unregister(name: str) -> None:
    STAGES.remove(get(name))


def names() -> list[str]:
    return [s.name for s in STAGES]


def get(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r} (stages: {', '.join(names())})")


def stage_config_hash(job: JobConfig, name: str, *extra: str) -> str:
    """The config hash the stage `name` computes for `job` with the facts `extra` about its inputs."""
    return get(name).config_hash(job, *extra)


def check_job(job: JobConfig) -> None:
    """What the schema cannot know: settings keyed by stage name, and each stage's own checks."""
    for key in job.slurm.stages:
        stage, _, item = key.partition("/")
        if stage not in names() or (item and get(stage).only is None):
            per_item = [f"{s.name}/NAME" for s in STAGES if s.only is not None]
            raise ConfigError(
                f"slurm: stages: unknown stage {key!r} (stages: {', '.join(names())}, or {', '.join(per_item)})"
            )
    for stage in STAGES:
        stage.check(job)

"""`miniplm run`: every step of the job in this process, in order.

Each stage skips what is finished and resumes what is not, so running the
whole pipeline again after an interruption anywhere ends with the outputs of
an uninterrupted run.
"""

from __future__ import annotations

from typing import Any, Callable

from miniplm.config import JobConfig
from miniplm.pipeline.plan import Step, steps
from miniplm.rundir import Worker


def run_step(job: JobConfig, step: Step, worker: Worker = Worker(), *, force: bool = False,
             show_progress: bool = True) -> Any:
    """Run one step's stage function (this worker's share of an array step); what it returns."""
    kwargs = dict(force=force, show_progress=show_progress)
    if step.command == "prepare":
        from miniplm.corpus import prepare

        return prepare.run(job, worker, **kwargs)
    if step.command == "score":
        from miniplm.scoring import score

        return score.run(job, worker, **kwargs)
    if step.command == "select":
        from miniplm.selection import select

        return select.run(job, worker, **kwargs)
    if step.command == "tokenize":
        from miniplm.corpus import tokenize

        return tokenize.run(job, worker, only=step.only, **kwargs)
    if step.command == "eval":
        from miniplm.evaluation import evaluate

        return evaluate.run(job, worker, **kwargs)
    from miniplm.training import train

    if step.command == "train-reference":
        return train.run_reference(job, **kwargs)
    if step.command == "train":
        return train.run(job, only=step.only, **kwargs)
    raise ValueError(f"no stage {step.command!r}")


def run(job: JobConfig, *, show_progress: bool = True,
        on_step: Callable[[Step, Any], None] | None = None) -> dict[str, Any]:
    """Every step, in order; each step's result by name. `on_step` hears of each as it ends."""
    results = {}
    for step in steps(job):
        results[step.name] = run_step(job, step, show_progress=show_progress)
        if on_step is not None:
            on_step(step, results[step.name])
    return results

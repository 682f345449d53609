"""`miniplm run`: every step of the job in this process, in order — the in-process launcher.

Each stage skips what is finished and resumes what is not, so running the
whole pipeline again after an interruption anywhere ends with the outputs of
an uninterrupted run. It keeps no queue: a step is done when `run` returns.
"""

from __future__ import annotations

from typing import Any, Callable

from miniplm.pipeline.launcher import Launcher, QueueState, Record, Submission
from miniplm.pipeline.plan import stage_of, steps
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.stage import Step
from miniplm.workers import Worker


def run_step(
    job: JobConfig, step: Step, worker: Worker = Worker(), *, force: bool = False, show_progress: bool = True
) -> Any:
    """Run one step's stage (this worker's share of an array step); what it returns."""
    return stage_of(step).run(job, worker, only=step.only, force=force, show_progress=show_progress)


class LocalLauncher(Launcher):
    """Runs each submitted step to its end, in order, in this process."""

    name = "local"

    def __init__(self, *, show_progress: bool = True, on_step: Callable[[Step, Any], None] | None = None):
        self.show_progress = show_progress
        self.on_step = on_step
        self.results: dict[str, Any] = {}

    def records(self, rd: RunDir) -> list[Record]:
        return []  # nothing outlives the process: the run directory says what is done

    def queued(self, rd: RunDir, records: list[Record]) -> dict[str, QueueState]:
        return {}

    def exit_code(self, rd: RunDir, step: Step, job_id: str, task: int | None) -> int | None:
        return None

    def submit(self, job: JobConfig, rd: RunDir, plan: list[Submission]) -> None:
        for sub in plan:
            if sub.action != "submit":
                continue
            self.results[sub.step.name] = run_step(job, sub.step, show_progress=self.show_progress)
            sub.job_id = "local"
            if self.on_step is not None:
                self.on_step(sub.step, self.results[sub.step.name])


def run(
    job: JobConfig, *, show_progress: bool = True, on_step: Callable[[Step, Any], None] | None = None
) -> dict[str, Any]:
    """Every step, in order; each step's result by name. `on_step` hears of each as it ends.

    Every step is run, finished or not: a finished stage returns its counts at once."""
    launcher = LocalLauncher(show_progress=show_progress, on_step=on_step)
    launcher.submit(job, RunDir(job.run_dir), [Submission(step, "submit") for step in steps(job)])
    return launcher.results

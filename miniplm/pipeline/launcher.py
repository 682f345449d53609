"""The seam between the pipeline and what runs its steps: a launcher submits a plan of steps and
reports the state of each step's tasks.

miniplm ships two: the in-process runner behind `miniplm run` (pipeline/local.py) and
SLURM job arrays behind `miniplm slurm` (pipeline/slurm.py). What to submit again
(pipeline/submissions.py) and `miniplm status` (pipeline/status.py) are written
against this interface only, so a new launcher is one module plus one line in
pipeline/launchers.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.stage import Step


@dataclass(frozen=True)
class QueueState:
    """A task the launcher still holds: waiting or running."""

    state: str  # PENDING, RUNNING, ...
    reason: str = ""  # why it pends: Resources, Dependency, DependencyNeverSatisfied, ...

    @property
    def dead(self) -> bool:
        """Pending on a step that failed: it will never start (clusters without kill_invalid_depend keep it)."""
        return self.state == "PENDING" and self.reason == "DependencyNeverSatisfied"


@dataclass(frozen=True)
class Record:
    """One earlier submission of a step."""

    step: str
    job_id: str
    tasks: list[int] | None  # array tasks submitted; None for a ranks step
    num_workers: int = 1  # the array's worker count (task i took shards i, i + N, ...)


@dataclass
class Task:
    job_id: str
    task: int | None  # the array task, None for a ranks step
    state: str  # pending, running, completed, failed, killed, not run (or the launcher's word)
    exit_code: int | None
    log: Path | None

    @property
    def name(self) -> str:
        return self.job_id if self.task is None else f"{self.job_id}_{self.task}"


@dataclass
class Submission:
    """One step's job, as planned (and, once submitted, its id)."""

    step: Step
    action: str  # submit | done | queued
    script: Path | None = None
    text: str = ""
    tasks: list[int] = field(default_factory=list)  # array tasks to submit
    num_workers: int = 1
    after: list[str] = field(default_factory=list)  # job ids (or <step> placeholders) it waits for
    job_id: str | None = None
    note: str = ""
    cancel: list[str] = field(default_factory=list)  # pending jobs of this step it replaces


class Launcher(ABC):
    """Submits steps and says what became of them."""

    name: str = ""

    @abstractmethod
    def records(self, rd: RunDir) -> list[Record]:
        """Every earlier submission in this run directory, oldest first."""

    @abstractmethod
    def queued(self, rd: RunDir, records: list[Record]) -> dict[str, QueueState]:
        """The tasks of these submissions still waiting or running, by `JOB` or `JOB_TASK`.
        Raises LaunchError when it cannot tell: taking that for an empty queue would submit running
        work twice."""

    @abstractmethod
    def exit_code(self, rd: RunDir, step: Step, job_id: str, task: int | None) -> int | None:
        """The exit code a task recorded when it ended; None when it recorded none (killed, or never ran)."""

    def log(self, rd: RunDir, step: Step, job_id: str, task: int | None) -> Path | None:
        """Where a task's output goes."""
        return None

    def max_tasks(self, job: JobConfig, step: Step) -> int:
        """At most this many array tasks for a step (each takes every N-th shard)."""
        return 1

    def prepare(self, job: JobConfig, rd: RunDir, sub: Submission, job_file: Path) -> None:
        """Fill in what submitting `sub` takes (a rendered script, say)."""

    @abstractmethod
    def submit(self, job: JobConfig, rd: RunDir, plan: list[Submission]) -> None:
        """Submit the plan's `submit` entries in order, each after the jobs it waits for (`after`
        holds job ids, or `<step>` for a step submitted earlier in the same plan); fill in job ids."""


def task_state(
    launcher: Launcher, rd: RunDir, step: Step, job_id: str, task: int | None, live: dict[str, QueueState]
) -> Task:
    """A task's state: the queue's word while the launcher holds it; else completed or failed (by its
    exit code), killed (it left a log but no exit code: a time limit, memory, a lost node), or not
    run (neither: cancelled, or a step it waited for failed)."""
    name = job_id if task is None else f"{job_id}_{task}"
    log = launcher.log(rd, step, job_id, task)
    if name in live:
        q = live[name]
        state = q.state.lower() + (f" ({q.reason})" if q.state == "PENDING" and q.reason not in ("", "None") else "")
        return Task(job_id, task, state, None, log)
    code = launcher.exit_code(rd, step, job_id, task)
    if code is not None:
        return Task(job_id, task, "completed" if code == 0 else "failed", code, log)
    return Task(job_id, task, "killed" if log is not None and log.exists() else "not run", None, log)

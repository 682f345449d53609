"""`miniplm status`: per step, shards done out of all, and the state of its tasks.

Progress comes from the run directory (the manifest and the shard markers),
so it is right whichever way the stages ran. Task states come from the
launchers (pipeline/launchers.py): the queue (pending, running) and the exit
code each task records when it ends; a task that left a log but no exit code
was killed (time limit, memory, a lost node), and one with neither never ran
(cancelled, or a step it waited for failed). A finished step whose outputs are
gone or changed since (records.py) is shown as damaged; one made from a file or
model that changed since, or from an earlier step redone or out of date itself
(inputs.py), as stale. Both make `status` exit non-zero.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from miniplm.errors import StageError
from miniplm.inputs import out_of_date
from miniplm.pipeline import plan
from miniplm.pipeline.launcher import Launcher, Task, task_state
from miniplm.records import problems, rerun
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.stage import Step

FAILED = ("failed", "killed")
BROKEN = ("failed", "damaged", "stale")


@dataclass
class StepStatus:
    step: Step
    # done, damaged (done, but its outputs changed since), stale (done, but what it was made from
    # changed since), failed, running, waiting
    state: str
    problems: list[str] = field(default_factory=list)  # what is wrong with a damaged or stale step
    done: int | None = None  # shards (prepare: input units) finished, for array steps
    total: int | None = None
    tasks: list[Task] = field(default_factory=list)  # the latest attempt of each task
    superseded: set[str] = field(default_factory=set)  # failed tasks whose shards were done since

    @property
    def failed_tasks(self) -> list[Task]:
        if self.state == "done":
            return []
        return [t for t in self.tasks if t.state in FAILED and t.name not in self.superseded]


def collect(job: JobConfig, launchers: list[Launcher] | None = None) -> list[StepStatus]:
    if launchers is None:
        from miniplm.pipeline.launchers import LAUNCHERS

        launchers = LAUNCHERS
    rd = RunDir(job.run_dir)
    submitted = [(launcher, launcher.records(rd)) for launcher in launchers]
    live = {launcher.name: launcher.queued(rd, records) for launcher, records in submitted}
    out = []
    known: dict = {}  # what out_of_date found of each stage, so that each is looked at once
    for step in plan.steps(job):
        status = StepStatus(step, plan.state(job, rd, step))
        if status.state == "done":
            for entry in plan.manifest_stages(job, step):
                state = rd.stage_state(entry)
                status.problems += [
                    f"{p}; run `{rerun(state, entry)} --force` to redo {entry}" for p in problems(rd.root, entry, state)
                ]
            if status.problems:
                status.state = "damaged"
            else:
                status.problems = _stale(rd, step.name, plan.manifest_stages(job, step), known)
                if status.problems:
                    status.state = "stale"
        pending: set[int] = set()
        if step.kind == "array":
            status.total = plan.shard_count(job, rd, step)
            if status.total is not None:
                pending = set(plan.pending_shards(job, rd, step) or [])
                status.done = status.total if status.state == "done" else status.total - len(pending)
        latest: dict[tuple, Task] = {}
        for launcher, records in submitted:
            for r in (r for r in records if r.step == step.name):
                for task in r.tasks if r.tasks is not None else [None]:
                    t = latest[(launcher.name, r.num_workers, task)] = task_state(
                        launcher, rd, step, r.job_id, task, live[launcher.name]
                    )
                    if (
                        task is not None
                        and status.total is not None
                        and t.state in FAILED
                        and not any(i % r.num_workers == task for i in pending)
                    ):
                        status.superseded.add(t.name)  # another task (another array size) did its shards
        status.tasks = list(latest.values())
        out.append(status)
    return out


def _stale(rd: RunDir, step: str, entries: list[str], known: dict) -> list[str]:
    """Why a finished step's entries are out of date, with the commands that redo them."""
    found = []
    for entry in entries:
        try:
            stale = out_of_date(rd, entry, known=known)
        except StageError as e:  # the record of an earlier stage is damaged
            found.append(str(e))
            continue
        if stale is not None:
            first, why = stale
            redo = f"run `{rerun(rd.stage_state(first), first)} --force` to redo {first}"
            if first != entry:
                redo += f", then `{rerun(rd.stage_state(entry), entry)} --force`"
            found.append(("" if entry == step else f"{entry}: ") + f"{why}; {redo}")
    return found


def render(job: JobConfig, statuses: list[StepStatus]) -> str:
    rd = RunDir(job.run_dir)
    width = max([len(s.step.name) for s in statuses] + [4]) + 2
    lines = [f"run {rd.root}", f"{'step':<{width}}{'state':<10}{'progress':<18}jobs"]
    for s in statuses:
        if s.total is not None:
            progress = f"{s.done}/{s.total} {plan.stage_of(s.step).unit.split()[-1]}"
        elif s.step.kind == "array":
            progress = "after prepare"
        else:
            progress = plan.progress(job, rd, s.step)
        by_job: dict[str, Counter] = {}
        for t in s.tasks:
            by_job.setdefault(t.job_id, Counter())[t.state] += 1
        jobs = "; ".join(f"job {j}: " + ", ".join(f"{n} {state}" for state, n in c.items()) for j, c in by_job.items())
        lines.append(f"{s.step.name:<{width}}{s.state:<10}{progress:<18}{jobs or '-'}")
    failures = [(s, t) for s in statuses for t in s.failed_tasks]
    broken = [s for s in statuses if s.state in BROKEN]
    if failures or broken:
        lines.append("")
        lines.append("failed:")
        for s, t in failures:
            what = f"exit code {t.exit_code}" if t.exit_code is not None else "ended without an exit code (killed?)"
            task = "" if t.task is None else f" task {t.task}"
            lines.append(f"  {s.step.name}{task} (job {t.name}): {what}")
            if t.log is not None:
                lines.append(f"    log: {t.log}")
                tail = _last_line(t.log)
                if tail:
                    lines.append(f"    last line: {tail}")
        for s in broken:
            for problem in s.problems:
                lines.append(f"  {s.step.name}: {s.state}: {problem}")
            if s.state == "failed" and not s.failed_tasks:
                errors = [rd.stage_state(m).get("error", "") for m in plan.manifest_stages(job, s.step)]
                error = next((e for e in errors if e), "")
                lines.append(f"  {s.step.name}: failed{': ' + error if error else ''}")
    return "\n".join(lines)


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def any_failed(statuses: list[StepStatus]) -> bool:
    return any(s.state in BROKEN or s.failed_tasks for s in statuses)

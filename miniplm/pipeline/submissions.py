"""What to submit now, for any launcher: finished steps are skipped, steps still queued are waited
on (not submitted twice), and of an unfinished array step only the tasks that own unfinished shards
are submitted. Jobs pending on a chain that can never finish are cancelled and replaced."""

from __future__ import annotations

from pathlib import Path

from miniplm.pipeline import plan
from miniplm.pipeline.launcher import Launcher, Submission
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.stage import Step


def array_tasks(launcher: Launcher, job: JobConfig, rd: RunDir, step: Step) -> tuple[list[int], int, str]:
    """Which array tasks to submit, out of how many workers, and why."""
    limit = launcher.max_tasks(job, step)
    n_shards = plan.shard_count(job, rd, step)
    unit = plan.stage_of(step).unit
    if n_shards is None:
        return list(range(limit)), limit, "shard count not known until prepare is done"
    workers = max(1, min(n_shards, limit))
    pending = plan.pending_shards(job, rd, step)
    if not pending:  # every shard written, the stage not closed: one task finishes it
        return [0], workers, f"all {unit} written; one task completes the stage"
    tasks = sorted({i % workers for i in pending})
    return tasks, workers, f"{len(pending)} of {n_shards} {unit} to do"


def plan_submissions(job: JobConfig, rd: RunDir, launcher: Launcher, job_file: Path) -> list[Submission]:
    """What the launcher would submit now, in order, with `<step>` placeholders for dependencies.

    Each step waits for the unfinished steps it reads from (plan.ordered), so a failure holds
    up only what reads its outputs; one reached through another step it waits for is not listed
    again (a dependency chain waits for its whole length).
    """
    records = launcher.records(rd)
    live = launcher.queued(rd, records)
    latest = {r.step: r for r in records}  # each step's latest submission
    out: list[Submission] = []
    steps, reads = plan.ordered(job)
    handles: dict[str, list[str]] = {}  # what waiting for a step means: its job, or nothing once it is done
    reach: dict[str, set[str]] = {}  # the steps a step waits for, through its chain
    resubmitted = False  # a step before this one is submitted anew: what pends on the old jobs must follow
    for step in steps:
        waits = [name for name in reads[step.name] if handles[name]]
        waits = [name for name in waits if not any(name in reach[other] for other in waits)]
        reach[step.name] = set(waits).union(*(reach[name] for name in waits))
        upstream = [h for name in waits for h in handles[name]]
        record = latest.get(step.name)
        mine = {t: q for t, q in live.items() if record and t.split("_")[0] == record.job_id}
        replace = (
            bool(mine)
            and all(q.state == "PENDING" for q in mine.values())
            and (resubmitted or any(q.dead for q in mine.values()))
        )
        if plan.state(job, rd, step) == "done":
            sub = Submission(step, "done", note="finished")
        elif mine and not replace:
            sub = Submission(step, "queued", job_id=record.job_id, note="already queued or running")
        else:
            sub = Submission(step, "submit", after=list(upstream), cancel=[record.job_id] if replace else [])
            resubmitted = True
            if step.kind == "array":
                sub.tasks, sub.num_workers, sub.note = array_tasks(launcher, job, rd, step)
            launcher.prepare(job, rd, sub, job_file)
            if sub.cancel:
                sub.note = (sub.note + "; " if sub.note else "") + f"replaces pending job {sub.cancel[0]}"
        out.append(sub)
        handles[step.name] = [] if sub.action == "done" else [sub.job_id or f"<{step.name}>"]
    return out

"""`miniplm slurm`: one sbatch script per step, rendered from slurm/*.sbatch.j2 into
RUN_DIR/slurm/, submitted as a chain of `--dependency=afterok` jobs.

Array steps (prepare, score, select, tokenize) run as job arrays: task i of
N takes shards i, i+N, ... (`--worker i --num-workers N`, so a resubmitted
subset of tasks still takes the same shards). Training steps run as one job
of `nodes` x torchrun. Submitting again looks at the run directory and the
queue: finished steps are skipped, steps still queued are waited on, not
submitted twice, and of an unfinished array step only the tasks that own
unfinished shards are submitted.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import jinja2
import orjson
import yaml

from miniplm.errors import ConfigError, LaunchError
from miniplm.files import atomic_write_text
from miniplm.jobfile import apply_overrides, load_yaml
from miniplm.pipeline import plan
from miniplm.pipeline.launcher import Launcher, QueueState, Record, Submission
from miniplm.pipeline.submissions import plan_submissions as _plan_submissions
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.slurm import SlurmResources
from miniplm.stage import Step

TEMPLATES = Path(__file__).resolve().parents[2] / "slurm"
DEFAULT_MAX_TASKS = 64


class SlurmError(LaunchError):
    """sbatch or squeue failed; the message has their output."""


def slug(step_name: str) -> str:
    return step_name.replace("/", "-")


def slurm_dir(rd: RunDir) -> Path:
    return rd.launcher("slurm")


def records_file(rd: RunDir) -> Path:
    return slurm_dir(rd) / "submissions.jsonl"


def exit_dir(rd: RunDir) -> Path:
    return slurm_dir(rd) / "exit"


def log_pattern(rd: RunDir, step: Step) -> Path:
    """Where a task's output goes, in sbatch's pattern (%A array job, %a task, %j job)."""
    return rd.logs.absolute() / (
        f"{slug(step.name)}-%A_%a.log" if step.kind == "array" else f"{slug(step.name)}-%j.log"
    )


def array_spec(tasks: list[int], parallel: int | None) -> str:
    """`0-7%4` for a run of tasks, `1,5,6` otherwise."""
    if tasks == list(range(tasks[0], tasks[-1] + 1)) and len(tasks) > 1:
        spec = f"{tasks[0]}-{tasks[-1]}"
    else:
        spec = ",".join(map(str, tasks))
    return spec + (f"%{parallel}" if parallel else "")


def read_records(rd: RunDir) -> list[dict]:
    try:
        return [orjson.loads(line) for line in records_file(rd).read_bytes().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def queue_states(job_ids: set[str]) -> dict[str, QueueState]:
    """`JOBID` or `JOBID_TASK` -> its state, for the given jobs still in the queue.

    Raises SlurmError when squeue fails: taking a failure for an empty queue
    would submit running work a second time.
    """
    if not job_ids:
        return {}
    command = ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmError(f"cannot ask SLURM for the state of jobs {', '.join(sorted(job_ids))}: {e}") from None
    if out.returncode != 0:
        raise SlurmError(f"{' '.join(command)} failed: {out.stderr.strip() or out.stdout.strip()}")
    states = {}
    for line in out.stdout.splitlines():
        task, state, reason = (line.split("|") + ["", ""])[:3]
        if task.split("_")[0] in job_ids:
            states[task] = QueueState(state, reason)
    return states


def snapshot_job(job_file: str, overrides: list[str], rd: RunDir, *, write: bool = True) -> Path:
    """The job as submitted (file + overrides), which every script runs: later edits of the job
    file do not change what queued jobs do."""
    data = load_yaml(Path(job_file).read_text(encoding="utf-8"))
    apply_overrides(data, overrides)
    text = f"# {job_file} {' '.join(overrides)}, as submitted by `miniplm slurm`\n" + yaml.safe_dump(
        data, sort_keys=False
    )
    # one file per distinct job: jobs queued by an earlier submission keep reading theirs
    path = slurm_dir(rd) / f"job-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if write and not path.exists():
        atomic_write_text(path, text)
    return path.absolute()


def _environment(job: JobConfig) -> jinja2.Environment:
    folder = Path(job.slurm.templates) if job.slurm.templates else TEMPLATES
    if not folder.is_dir():
        raise ConfigError(f"slurm.templates: no folder {str(folder)!r}")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder), keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )


def _sbatch_lines(res: SlurmResources, rd: RunDir, step: Step) -> list[str]:
    lines = [
        f"--chdir={shlex.quote(os.getcwd())}",
        f"--output={shlex.quote(str(log_pattern(rd, step)))}",
        "--open-mode=append",
        "--requeue",
    ]
    for key, flag in (
        ("partition", "partition"),
        ("account", "account"),
        ("qos", "qos"),
        ("time", "time"),
        ("cpus", "cpus-per-task"),
        ("mem", "mem"),
    ):
        if getattr(res, key) is not None:
            lines.append(f"--{flag}={getattr(res, key)}")
    gpus = res.gpus if step.kind == "array" else res.gpus_per_node
    if gpus:
        lines.append(f"--gres=gpu:{gpus}")
    return lines + res.sbatch


def render(job: JobConfig, rd: RunDir, step: Step, job_file: Path, tasks: list[int], num_workers: int) -> str:
    res = job.slurm.resources(step.name)
    context = dict(
        step=step.name,
        command=step.stage,
        job_file=shlex.quote(str(job_file)),
        slug=slug(step.name),
        job_name=f"miniplm-{slug(step.name)}",
        python=shlex.quote(job.slurm.python or sys.executable),
        setup=[*job.slurm.setup, *res.setup],
        sbatch_lines=_sbatch_lines(res, rd, step),
        exit_dir=shlex.quote(str(exit_dir(rd).absolute())),
    )
    if step.kind == "array":
        template = "array.sbatch.j2"
        extra = " ".join(
            a
            for a in (plan.stage_of(step).slurm_arguments(), f"--only {shlex.quote(step.only)}" if step.only else "")
            if a
        )
        context.update(array=array_spec(tasks, res.parallel), num_workers=num_workers, extra_args=extra)
    else:
        template = "ranks.sbatch.j2"
        nodes = res.nodes or 1
        procs = res.gpus_per_node or res.procs_per_node or 1
        only = f"--only {shlex.quote(step.only)}" if step.only else ""
        context.update(nodes=nodes, procs_per_node=procs, extra_args=only)
    return _environment(job).get_template(template).render(template=template, **context)


def sbatch_command(sub: Submission) -> list[str]:
    command = ["sbatch", "--parsable"]
    if sub.after:
        command.append("--dependency=afterok:" + ":".join(sub.after))
    return command + [str(sub.script)]


class SlurmLauncher(Launcher):
    """Array steps as job arrays, ranks steps as one job of `nodes` x torchrun; chained with afterok."""

    name = "slurm"

    def records(self, rd: RunDir) -> list[Record]:
        return [Record(r["step"], r["job_id"], r["tasks"], r["num_workers"]) for r in read_records(rd)]

    def queued(self, rd: RunDir, records: list[Record]) -> dict[str, QueueState]:
        return queue_states({r.job_id for r in records})

    def exit_code(self, rd: RunDir, step: Step, job_id: str, task: int | None) -> int | None:
        name = job_id if task is None else f"{job_id}_{task}"
        try:
            return int((exit_dir(rd) / f"{slug(step.name)}-{name}").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def log(self, rd: RunDir, step: Step, job_id: str, task: int | None) -> Path:
        return Path(str(log_pattern(rd, step)).replace("%A", job_id).replace("%a", str(task)).replace("%j", job_id))

    def max_tasks(self, job: JobConfig, step: Step) -> int:
        return job.slurm.resources(step.name).max_tasks or DEFAULT_MAX_TASKS

    def prepare(self, job: JobConfig, rd: RunDir, sub: Submission, job_file: Path) -> None:
        sub.script = slurm_dir(rd) / f"{slug(sub.step.name)}.sbatch"
        sub.text = render(job, rd, sub.step, job_file, sub.tasks, sub.num_workers)

    def submit(self, job: JobConfig, rd: RunDir, plan_: list[Submission]) -> None:
        """Write the scripts and submit them in order, filling in the job ids each one waits for."""
        ids: dict[str, str] = {}
        for sub in plan_:
            if sub.job_id:
                ids[f"<{sub.step.name}>"] = sub.job_id
            if sub.action != "submit":
                continue
            sub.after = [ids.get(a, a) for a in sub.after]
            if sub.cancel:  # pending on an old chain: it would never start, or start too early
                subprocess.run(["scancel", *sub.cancel], capture_output=True, text=True, timeout=120)
            atomic_write_text(sub.script, sub.text)
            rd.logs.mkdir(parents=True, exist_ok=True)
            try:
                out = subprocess.run(sbatch_command(sub), capture_output=True, text=True, timeout=120)
            except OSError as e:
                raise SlurmError(f"cannot run sbatch: {e}") from None
            if out.returncode != 0:
                raise SlurmError(f"sbatch {sub.script} failed: {out.stderr.strip() or out.stdout.strip()}")
            sub.job_id = out.stdout.strip().split(";")[0]
            ids[f"<{sub.step.name}>"] = sub.job_id
            record = {
                "step": sub.step.name,
                "job_id": sub.job_id,
                "tasks": sub.tasks if sub.step.kind == "array" else None,
                "num_workers": sub.num_workers,
                "script": str(sub.script),
                "after": sub.after,
                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            with open(records_file(rd), "ab") as f:
                f.write(orjson.dumps(record) + b"\n")


SLURM = SlurmLauncher()


def plan_submissions(job: JobConfig, rd: RunDir, job_file: Path) -> list[Submission]:
    """What `miniplm slurm` would submit now, in order, with placeholder dependencies."""
    return _plan_submissions(job, rd, SLURM, job_file)


def submit(job: JobConfig, rd: RunDir, plan_: list[Submission]) -> None:
    SLURM.submit(job, rd, plan_)

"""The `miniplm` command: a subcommand per registered stage, plus run, slurm, status and report.

Argument parsing and printing only: what a stage is and does lives in its
module, and the list of stages in miniplm/stages.py.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable

from miniplm import logs, outputs
from miniplm.errors import ConfigError, LaunchError, StageError
from miniplm.job import load_job
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.stage import Stage, Step
from miniplm.stages import STAGES
from miniplm.workers import Worker, resolve_worker

EPILOG = """\
Overrides are dotted keys after the job file, parsed as YAML values:
  miniplm prepare jobs/demo.yaml corpus.docs_per_shard=500 run_dir=runs/try2
"""


def _job_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job file (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a job setting")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show other libraries' messages (DeepSpeed, lm-eval, ...) here instead of in RUN_DIR/logs/miniplm.log",
    )


def _say(*lines: str) -> None:
    """Print to stdout. When the reader has gone (`miniplm status JOB | head`), the rest goes
    nowhere: the command's work and exit code do not depend on who reads what it says."""
    try:
        print(*lines, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _announce(stage: Stage, job: JobConfig, result: Any) -> None:
    """A stage's result on stdout, and its warnings (nothing kept, ...) on stderr."""
    _say("\n".join(describe(stage, job, result)))
    for warning in stage.warnings(job, result) if result is not None else []:
        print(f"miniplm: warning: {warning}", file=sys.stderr, flush=True)


def _worker_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "work split",
        "which share of the shards this process takes; by default from "
        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or RANK/WORLD_SIZE, else all of them",
    )
    group.add_argument("--worker", type=int, metavar="I", help="this worker's index, 0-based")
    group.add_argument("--num-workers", type=int, metavar="N", help="how many workers share the stage")


def _worker(args: argparse.Namespace) -> Worker:
    try:
        return resolve_worker(getattr(args, "worker", None), getattr(args, "num_workers", None))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _is_rank_zero() -> bool:
    from miniplm import distributed

    return distributed.is_rank_zero()


def describe(stage: Stage, job: JobConfig, result: Any) -> list[str]:
    """What a stage's result says, as lines for the terminal."""
    if result is None:  # a sharded stage's worker whose share is done
        return [f"{stage.name}: this worker's share is done; the last worker to finish completes the stage"]
    return stage.describe(job, result)


def _run_stage(stage: Stage, job: JobConfig, args: argparse.Namespace) -> int:
    result = stage.run(
        job, _worker(args), only=getattr(args, "only", None), force=args.force, show_progress=not args.quiet
    )
    if _is_rank_zero():
        _announce(stage, job, result)
    return 0


def cmd_run(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.pipeline import local
    from miniplm.pipeline.plan import stage_of

    def on_step(step: Step, result) -> None:
        if _is_rank_zero():
            _announce(stage_of(step), job, result)

    results = local.run(job, show_progress=not args.quiet, on_step=on_step)
    losses = {s.name: results[outputs.trained(s.name).stage][s.name].get("heldout_loss") for s in job.students}
    if "eval" not in results and any(v is not None for v in losses.values()):
        _say("\nheld-out loss per token (lower is better):")
        for student in job.students:
            loss = losses[student.name]
            shown = f"{loss:.4f}" if loss is not None else "not measured (no heldout token set)"
            _say(f"  {student.name:<24} {shown}   trained on {student.tokens!r}")
    if RunDir(job.run_dir).report_page.exists():
        _say(f"report: {RunDir(job.run_dir).report_page}")
    return 0


def cmd_slurm(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.pipeline import slurm

    rd = RunDir(job.run_dir)
    job_file = slurm.snapshot_job(args.job, args.overrides, rd, write=not args.dry_run)
    submissions = slurm.plan_submissions(job, rd, job_file)
    if args.dry_run:
        for sub in submissions:
            if sub.action == "submit":
                _say(f"# ---- {sub.script}\n{sub.text}")
    else:
        slurm.submit(job, rd, submissions)
    _say(f"{'dry run: would submit' if args.dry_run else 'submitted'} (run {rd.root}):")
    width = max(len(sub.step.name) for sub in submissions) + 2
    for sub in submissions:
        if sub.action == "submit":
            what = f"array {len(sub.tasks)} of {sub.num_workers} tasks" if sub.step.kind == "array" else "1 job"
            ident = f"job {sub.job_id}" if sub.job_id else " ".join(slurm.sbatch_command(sub))
            _say(f"  {sub.step.name:<{width}} {what}{' (' + sub.note + ')' if sub.note else ''}: {ident}")
        else:
            _say(f"  {sub.step.name:<{width}} {sub.note}" + (f" (job {sub.job_id})" if sub.job_id else ""))
    if not args.dry_run and any(s.action == "submit" for s in submissions):
        _say(f"follow it with: miniplm status {args.job} {' '.join(args.overrides)}".rstrip())
    return 0


def cmd_status(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.pipeline import status

    statuses = status.collect(job)
    _say(status.render(job, statuses))
    return 1 if status.any_failed(statuses) else 0


def cmd_report(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.report.page import assemble

    rd = RunDir(job.run_dir)
    for stage in STAGES:
        if stage.applies(job) and any(rd.stage_state(p.name).get("state") == "done" for p in stage.parts(job)):
            stage.report(job, rd)
    if not rd.report_sections.exists():
        raise StageError(f"{rd.root}: nothing to report yet; run `miniplm select` (or `miniplm eval`) first")
    _say(f"report: {assemble(rd)}")
    return 0


def _stage_parser(sub, stage: Stage) -> None:
    p = sub.add_parser(
        stage.name,
        help=stage.summary,
        description=stage.description + " Finished work is skipped on a rerun.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _job_args(p)
    if stage.kind == "array":  # ranks stages split by process rank, not by shard
        _worker_args(p)
    p.add_argument("--force", action="store_true", help=f"discard earlier {stage.name} output in RUN_DIR and redo it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    if stage.only:
        p.add_argument("--only", metavar="NAME", help=f"only this {stage.only}")
    p.set_defaults(handler=functools.partial(_run_stage, stage))


COMMANDS = {
    "run": (
        "run every stage of the job in order, here",
        "Run every stage of the job in pipeline order ({stages}), in this process. Finished work is skipped "
        "and unfinished work resumes, so after an interruption run the same command again.",
        cmd_run,
    ),
    "slurm": (
        "render one sbatch script per stage and submit them as a dependency chain",
        "Write RUN_DIR/slurm/STAGE.sbatch from the templates in slurm/ and the job's `slurm:` block, and "
        "submit them chained with --dependency=afterok: job arrays over shards for array stages, torchrun "
        "on `nodes` nodes for training. Run it again after a failure or a preemption: it submits only what "
        "is not finished or queued.",
        cmd_slurm,
    ),
    "status": (
        "per stage: shards done, running and failed tasks with their logs",
        "Show each stage's progress from RUN_DIR and its SLURM tasks' states. Exits 1 when a stage or a task failed.",
        cmd_status,
    ),
    "report": (
        "rebuild the report from the finished stages' outputs",
        "Rebuild RUN_DIR/report/ (index.html, summary.json, plots) from what the finished stages wrote.",
        cmd_report,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miniplm",
        description="Refine a pretraining corpus with a teacher LM and train students on it (MiniPLM).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in STAGES:
        _stage_parser(sub, stage)
    for name, (summary, description, handler) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=summary,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description=description.format(stages=", ".join(s.name for s in STAGES)),
        )
        _job_args(p)
        if name == "run":
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
            p.add_argument(
                "--seeds",
                type=int,
                metavar="N",
                help="train every student with N seeds and compare their mean and spread (the same as "
                "the override eval.seeds=N; the job needs an eval: section)",
            )
        if name == "slurm":
            p.add_argument("--dry-run", action="store_true", help="print the scripts and the plan; submit nothing")
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting positional overrides at the first option;
    # take any `key=value` that comes after one too.
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    handler: Callable[[JobConfig, argparse.Namespace], int] = args.handler
    try:
        job = load_job(args.job, args.overrides)
        if getattr(args, "seeds", None) is not None:
            if job.eval is None:
                raise ConfigError(
                    f"{args.job}: --seeds compares the students' seeds in eval, and the job has no "
                    "eval: section (add eval: {models: [students], tasks: []})"
                )
            args.overrides.append(f"eval.seeds={args.seeds}")
            job = load_job(args.job, args.overrides)
        logs.configure(None if args.verbose else RunDir(job.run_dir).log_file)
        return handler(job, args)
    except ConfigError as e:
        print(f"miniplm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("miniplm: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (StageError, LaunchError, OSError) as e:
        # bad input under on_error: fail, a full disk, ...: the message says where
        print(f"miniplm: {args.stage} failed: {e}", file=sys.stderr)
        return 1
    finally:
        logs.configure(None)


if __name__ == "__main__":
    sys.exit(main())

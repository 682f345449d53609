"""The `miniplm` command: one function per stage, argument parsing only."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Callable

from miniplm.config import ConfigError, JobConfig, load_job
from miniplm.pipeline.plan import Step
from miniplm.pipeline.slurm import SlurmError
from miniplm.rundir import StageError, Worker, resolve_worker

EPILOG = """\
Overrides are dotted keys after the job file, parsed as YAML values:
  miniplm prepare jobs/demo.yaml corpus.docs_per_shard=500 run_dir=runs/try2
"""


def _job_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job file (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a job setting")


def _worker_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "work split", "which share of the shards this process takes; by default from "
        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or RANK/WORLD_SIZE, else all of them")
    group.add_argument("--worker", type=int, metavar="I", help="this worker's index, 0-based")
    group.add_argument("--num-workers", type=int, metavar="N", help="how many workers share the stage")


def _worker(args: argparse.Namespace) -> Worker:
    try:
        return resolve_worker(getattr(args, "worker", None), getattr(args, "num_workers", None))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _is_rank_zero() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def describe(step: Step, job: JobConfig, result) -> list[str]:
    """What a step's result says, as lines for the terminal."""
    if step.command == "tokenize":
        lines = []
        for name, counts in result.items():
            if counts is None:
                lines.append(f"tokenize {name}: this worker's shards are written; other workers still have shards to write")
            else:
                lines.append(f"tokenize {name}: {counts['documents']:,} documents, {counts['tokens']:,} tokens -> "
                             f"{counts['rows']:,} rows of {counts['seq_len'] + 1} ({counts['tail_tokens_dropped']:,} "
                             f"tail tokens left over) in {job.run_dir}/tokens/{name}")
        return lines
    if result is None:  # a sharded stage's worker whose share is done
        return [f"{step.name}: this worker's share is done; the last worker to finish completes the stage"]
    if step.command == "prepare":
        from miniplm.corpus import prepare

        return [f"prepare: documents in {job.run_dir}/docs", *prepare.summary_lines(result)]
    if step.command == "score":
        return [f"score: {result['rows']:,} rows, {result['tokens']:,} tokens scored, in {job.run_dir}/scores"]
    if step.command == "select":
        dropped = ", ".join(f"{r} {n:,}" for r, n in result["dropped"].items() if n)
        tokens = f"{result['tokens_kept']:,} of {result['tokens_scored']:,} tokens"
        if "doc_tokens" in result and result["doc_tokens"] != result["tokens_scored"]:  # prefixes were scored
            tokens = (f"{result['doc_tokens_kept']:,} of {result['doc_tokens']:,} tokens, scored on "
                      f"{result['tokens_kept']:,} of {result['tokens_scored']:,}")
        lines = [f"select: kept {result['kept']:,} of {result['scored']:,} documents ({tokens}); "
                 f"dropped: {dropped or 'none'}"]
        if "random_baseline" in result:
            base = result["random_baseline"]
            lines.append(f"select: random baseline of the same token budget: {base['kept']:,} documents, "
                         f"{base['tokens']:,} tokens, in {job.run_dir}/selected-random")
        return [*lines, f"report: {job.run_dir}/report/index.html"]
    if step.command == "eval":
        from miniplm.evaluation.compare import markdown

        results = json.loads((job.run_dir / "eval" / "results.json").read_text())
        return [f"eval: {len(results)} models; {job.run_dir}/eval/comparison.md:", markdown(results).rstrip()]
    if step.command == "train-reference":
        counts = result["reference"]
        return [f"train-reference: {counts['step']} steps, final loss {counts['loss']:.4f}; "
                f"model in {job.run_dir}/models/reference"]
    lines = []
    for name, counts in result.items():
        held = counts.get("heldout_loss")
        lines.append(f"train {name}: {counts['step']} steps, {counts['tokens']:,} tokens, final loss "
                     f"{counts['loss']:.4f}" + (f", held-out loss {held:.4f}" if held is not None else "")
                     + f"; model in {job.run_dir}/models/{name}")
    return lines


def _run_stage(command: str, job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.pipeline.local import run_step

    step = Step(command, command, "ranks" if command.startswith("train") else "array", getattr(args, "only", None))
    result = run_step(job, step, _worker(args), force=args.force, show_progress=not args.quiet)
    if _is_rank_zero():
        print("\n".join(describe(step, job, result)))
    return 0


def cmd_run(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.pipeline import local

    def on_step(step: Step, result) -> None:
        if _is_rank_zero():
            print("\n".join(describe(step, job, result)), flush=True)

    results = local.run(job, show_progress=not args.quiet, on_step=on_step)
    losses = {s.name: results[f"train/{s.name}"][s.name].get("heldout_loss") for s in job.students}
    if "eval" not in results and any(v is not None for v in losses.values()):
        print("\nheld-out loss per token (lower is better):")
        for student in job.students:
            loss = losses[student.name]
            shown = f"{loss:.4f}" if loss is not None else "not measured (no heldout token set)"
            print(f"  {student.name:<24} {shown}   trained on {student.tokens!r}")
    if "select" in results:
        print(f"report: {job.run_dir}/report/index.html")
    return 0


def cmd_slurm(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.pipeline import slurm
    from miniplm.rundir import RunDir

    rd = RunDir(job.run_dir)
    job_file = slurm.snapshot_job(args.job, args.overrides, rd, write=not args.dry_run)
    submissions = slurm.plan_submissions(job, rd, job_file)
    if args.dry_run:
        for sub in submissions:
            if sub.action == "submit":
                print(f"# ---- {sub.script}\n{sub.text}")
    else:
        slurm.submit(job, rd, submissions)
    print(f"{'dry run: would submit' if args.dry_run else 'submitted'} (run {rd.root}):")
    width = max(len(sub.step.name) for sub in submissions) + 2
    for sub in submissions:
        if sub.action == "submit":
            what = f"array {len(sub.tasks)} of {sub.num_workers} tasks" if sub.step.kind == "array" else "1 job"
            ident = f"job {sub.job_id}" if sub.job_id else " ".join(slurm.sbatch_command(sub))
            print(f"  {sub.step.name:<{width}} {what}{' (' + sub.note + ')' if sub.note else ''}: {ident}")
        else:
            print(f"  {sub.step.name:<{width}} {sub.note}" + (f" (job {sub.job_id})" if sub.job_id else ""))
    if not args.dry_run and any(s.action == "submit" for s in submissions):
        print(f"follow it with: miniplm status {args.job} {' '.join(args.overrides)}".rstrip())
    return 0


def cmd_status(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.pipeline import status

    statuses = status.collect(job)
    print(status.render(job, statuses))
    return 1 if status.any_failed(statuses) else 0


def cmd_report(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.selection import select

    print(f"report: {select.rebuild_report(job)}")
    return 0


# The stage commands, in pipeline order: (summary, description); each runs through _run_stage.
STAGES = {
    "prepare": ("read raw sources into deduplicated document shards per split",
                "Read the job's corpus.inputs, drop bad, empty and duplicate documents (counted by reason), and "
                "write RUN_DIR/docs/{main,reference,heldout}/shard-*.parquet with stats.json and rejects.jsonl."),
    "train-reference": ("train the reference LM on the reference split (reference: {train: ...})",
                        "Tokenize the reference split with the teacher's tokenizer and train the reference LM with "
                        "DeepSpeed into RUN_DIR/models/reference, which score then uses."),
    "score": ("teacher and reference log-probabilities for every main-split document",
              "Run the teacher and the reference over every main-split shard and write "
              "RUN_DIR/scores/shard-*.parquet (id, n_tokens, teacher_logprob, reference_logprob). "
              "Resumes inside a shard after a kill."),
    "select": ("keep the documents the strategy ranks highest, with their text, and write the report",
               "Decide from all score shards at once what to keep (select.strategy and its budget, the noise filter, "
               "the source cap), then write RUN_DIR/selected/shard-*.parquet (the documents plus `score`) and "
               "RUN_DIR/report/."),
    "tokenize": ("pack documents into token rows for training",
                 "For each token set in the job's `tokenize:` list, tokenize its input (selected documents or a "
                 "split), join documents with EOS and cut the stream into shuffled rows of seq_len + 1 tokens in "
                 "RUN_DIR/tokens/NAME/shard-*.arrow (Arrow IPC, memory-mapped by the trainer)."),
    "train": ("pretrain the job's students with DeepSpeed",
              "Train each student on its token set and write RUN_DIR/models/NAME (save_pretrained, with the "
              "tokenizer), metrics and checkpoints in RUN_DIR/train/NAME. Run it alone, or under torchrun, the "
              "deepspeed launcher or srun for several processes; a killed run resumes from its last checkpoint."),
    "eval": ("held-out loss, perplexity and zero-shot accuracy of the job's models, compared",
             "Evaluate every model eval.models names (students, the reference, the teacher, any checkpoint): loss "
             "and perplexity per token on the held-out split and eval.corpora, zero-shot accuracy on eval.tasks "
             "through lm-evaluation-harness. Writes RUN_DIR/eval/ (results.json, comparison.md, comparison.png) "
             "and adds the comparison to the selection report. Models split over workers like shards."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miniplm",
        description="Refine a pretraining corpus with a teacher LM and train students on it (MiniPLM).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    for name, (summary, description) in STAGES.items():
        p = sub.add_parser(name, help=summary, description=description + " Finished work is skipped on a rerun.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        _job_args(p)
        if not name.startswith("train"):  # training splits by process rank, not by shard
            _worker_args(p)
        p.add_argument("--force", action="store_true", help=f"discard earlier {name} output in RUN_DIR and redo it")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.set_defaults(handler=functools.partial(_run_stage, name))
        if name in ("tokenize", "train"):
            p.add_argument("--only", metavar="NAME", help=f"only this {'token set' if name == 'tokenize' else 'student'}")
    p = sub.add_parser("run", help="run every stage of the job in order, here",
                       description="Run prepare, train-reference (when the job trains its reference), score, select, "
                       "tokenize and train each student, in this process. Finished work is skipped and unfinished "
                       "work resumes, so after an interruption run the same command again.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _job_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("slurm", help="render one sbatch script per stage and submit them as a dependency chain",
                       description="Write RUN_DIR/slurm/STAGE.sbatch from the templates in slurm/ and the job's "
                       "`slurm:` block, and submit them chained with --dependency=afterok: job arrays over shards "
                       "for prepare, score, select and tokenize, torchrun on `nodes` nodes for training. Run it "
                       "again after a failure or a preemption: it submits only what is not finished or queued.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _job_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the scripts and the plan; submit nothing")
    p.set_defaults(handler=cmd_slurm)
    p = sub.add_parser("status", help="per stage: shards done, running and failed tasks with their logs",
                       description="Show each stage's progress from RUN_DIR and its SLURM tasks' states. Exits 1 "
                       "when a stage or a task failed.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _job_args(p)
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("report", help="rebuild the selection report from the decisions on disk",
                       description="Rebuild RUN_DIR/report/ (index.html, summary.json, plots) after select.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _job_args(p)
    p.set_defaults(handler=cmd_report)
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
        return handler(job, args)
    except ConfigError as e:
        print(f"miniplm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("miniplm: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (StageError, SlurmError, OSError) as e:
        # bad input under on_error: fail, a full disk, ...: the message says where
        print(f"miniplm: {args.stage} failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `miniplm` command: one function per stage, argument parsing only."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from miniplm.config import ConfigError, JobConfig, load_job
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


def _run_share(stage: str, run: Callable, job: JobConfig, args: argparse.Namespace, **kwargs):
    """Run this worker's share of a sharded stage; None (and says so) while others are still at it."""
    result = run(job, _worker(args), force=args.force, show_progress=not args.quiet, **kwargs)
    if result is None:
        print(f"{stage}: this worker's share is done; the last worker to finish completes the stage")
    return result


def cmd_prepare(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.corpus import prepare

    stats = _run_share("prepare", prepare.run, job, args)
    if stats is None:
        return 0
    print(f"prepare: documents in {job.run_dir}/docs")
    prepare.print_summary(stats)
    return 0


def cmd_score(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.scoring import score

    counts = _run_share("score", score.run, job, args)
    if counts is None:
        return 0
    print(f"score: {counts['rows']:,} rows, {counts['tokens']:,} tokens scored, in {job.run_dir}/scores")
    return 0


def cmd_select(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.selection import select

    counts = _run_share("select", select.run, job, args)
    if counts is None:
        return 0
    dropped = ", ".join(f"{r} {n:,}" for r, n in counts["dropped"].items() if n)
    print(f"select: kept {counts['kept']:,} of {counts['scored']:,} documents "
          f"({counts['tokens_kept']:,} of {counts['tokens_scored']:,} tokens); dropped: {dropped or 'none'}")
    print(f"report: {job.run_dir}/report/index.html")
    return 0


def cmd_tokenize(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.corpus import tokenize

    for name, counts in tokenize.run(job, _worker(args), only=args.only, force=args.force,
                                     show_progress=not args.quiet).items():
        if counts is None:
            print(f"tokenize {name}: this worker's shards are written; other workers still have shards to write")
        else:
            print(f"tokenize {name}: {counts['documents']:,} documents, {counts['tokens']:,} tokens -> "
                  f"{counts['rows']:,} rows of {counts['seq_len'] + 1} ({counts['tail_tokens_dropped']:,} tail tokens "
                  f"left over) in {job.run_dir}/tokens/{name}")
    return 0


def cmd_train(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.training import train

    results = train.run(job, only=args.only, force=args.force, show_progress=not args.quiet)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        for name, counts in results.items():
            held = counts.get("heldout_loss")
            print(f"train {name}: {counts['step']} steps, {counts['tokens']:,} tokens, final loss {counts['loss']:.4f}"
                  + (f", held-out loss {held:.4f}" if held is not None else "") + f"; model in {job.run_dir}/models/{name}")
    return 0


def cmd_train_reference(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.training import train

    counts = train.run_reference(job, force=args.force, show_progress=not args.quiet)["reference"]
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"train-reference: {counts['step']} steps, final loss {counts['loss']:.4f}; "
              f"model in {job.run_dir}/models/reference")
    return 0


def cmd_report(job: JobConfig, args: argparse.Namespace) -> int:
    from miniplm.selection import select

    print(f"report: {select.rebuild_report(job)}")
    return 0


STAGES = {
    "prepare": (cmd_prepare, "read raw sources into deduplicated document shards per split",
                "Read the job's corpus.inputs, drop bad, empty and duplicate documents (counted by reason), and "
                "write RUN_DIR/docs/{main,reference,heldout}/shard-*.parquet with stats.json and rejects.jsonl."),
    "train-reference": (cmd_train_reference, "train the reference LM on the reference split (reference: {train: ...})",
                        "Tokenize the reference split with the teacher's tokenizer and train the reference LM with "
                        "DeepSpeed into RUN_DIR/models/reference, which score then uses."),
    "score": (cmd_score, "teacher and reference log-probabilities for every main-split document",
              "Run the teacher and the reference over every main-split shard and write "
              "RUN_DIR/scores/shard-*.parquet (id, n_tokens, teacher_logprob, reference_logprob). "
              "Resumes inside a shard after a kill."),
    "select": (cmd_select, "keep the documents the strategy ranks highest, with their text, and write the report",
               "Decide from all score shards at once what to keep (select.strategy and its budget, the noise filter, "
               "the source cap), then write RUN_DIR/selected/shard-*.parquet (the documents plus `score`) and "
               "RUN_DIR/report/."),
    "tokenize": (cmd_tokenize, "pack documents into token rows for training",
                 "For each token set in the job's `tokenize:` list, tokenize its input (selected documents or a "
                 "split), join documents with EOS and cut the stream into shuffled rows of seq_len + 1 tokens in "
                 "RUN_DIR/tokens/NAME/shard-*.arrow (Arrow IPC, memory-mapped by the trainer)."),
    "train": (cmd_train, "pretrain the job's students with DeepSpeed",
              "Train each student on its token set and write RUN_DIR/models/NAME (save_pretrained, with the "
              "tokenizer), metrics and checkpoints in RUN_DIR/train/NAME. Run it alone, or under torchrun, the "
              "deepspeed launcher or srun for several processes; a killed run resumes from its last checkpoint."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miniplm",
        description="Refine a pretraining corpus with a teacher LM and train students on it (MiniPLM).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    for name, (handler, summary, description) in STAGES.items():
        p = sub.add_parser(name, help=summary, description=description + " Finished work is skipped on a rerun.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        _job_args(p)
        if not name.startswith("train"):  # training splits by process rank, not by shard
            _worker_args(p)
        p.add_argument("--force", action="store_true", help=f"discard earlier {name} output in RUN_DIR and redo it")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.set_defaults(handler=handler)
        if name in ("tokenize", "train"):
            p.add_argument("--only", metavar="NAME", help=f"only this {'token set' if name == 'tokenize' else 'student'}")
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
    except (StageError, OSError) as e:
        # bad input under on_error: fail, a full disk, ...: the message says where
        print(f"miniplm: {args.stage} failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

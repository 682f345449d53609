#!/usr/bin/env python3
"""What a trainer setting costs in loss: two or more variants of the trainer trained on the same
token set from the same initial weights over the same rows, their loss curves side by side.

    python benchmarks/loss_gap.py --tokens RUN_DIR/tokens/selected --preset qwen-200m --steps 200 \\
        --variants auto+step auto+step+float8        # one GPU: float8's loss gap over 200 steps
    python benchmarks/loss_gap.py --tokens RUN_DIR/tokens/main --preset tiny --steps 20 \\
        --variants rows auto+step                    # CPU: the compiled step, token-sized micro-batches

Each variant (the names of benchmarks/train_bench.py) runs the trainer's own `prepare` and
`train_step` with warmup then cosine decay; the gap is the mean loss of the last tenth of the steps
against the first variant's. --json appends the figures to a file.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from train_bench import VARIANTS, VocabStub  # benchmarks/, the script's folder

from miniplm.config import StudentConfig
from miniplm.corpus.tokens import TokenRows
from miniplm.training.data import RowPlan
from miniplm.training.launch import init_distributed
from miniplm.training.trainer import lr_at, prepare, train_step


def curve(student: StudentConfig, rows: TokenRows, vocab: int, device: str, lr: float) -> list[float]:
    torch.manual_seed(0)
    run = prepare(student, VocabStub(vocab), rows.width - 1, device)
    plan = RowPlan(len(rows), run.rows_per_step, seed=0)
    warmup = max(1, student.steps // 10)
    return [
        float(train_step(run, rows, plan, step, lr_at(step, lr, warmup, student.steps, 0.1), device)["loss"])
        for step in range(student.steps)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", required=True, help="a token set folder (RUN_DIR/tokens/NAME)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: 32 rows a step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["auto+step", "auto+step+float8"])
    parser.add_argument("--json", help="append the figures to this file (JSON lines)")
    args = parser.parse_args()
    init_distributed()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    rows = TokenRows(args.tokens)
    vocab = int(max(int(np.max(rows[i])) for i in range(len(rows)))) + 1
    batch_tokens = args.batch_tokens or 32 * (rows.width - 1)
    base = StudentConfig(
        name="gap", preset=args.preset, tokens="gap", steps=args.steps, batch_tokens=batch_tokens, micro_batch=8
    )
    print(f"{args.preset} on {len(rows)} rows of {rows.width - 1} tokens, {batch_tokens} tokens a step, {device}")
    first = None
    for name in args.variants:
        student = StudentConfig(**base.model_copy(update=VARIANTS[name]).model_dump())
        try:
            losses = curve(student, rows, vocab, device, args.lr)
        except Exception as e:  # a variant this machine cannot run (float8 on a CPU) leaves the others
            print(f"{name:<17} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        tail = float(np.mean(losses[-max(1, args.steps // 10) :]))
        first = tail if first is None else first
        marks = " ".join(f"{losses[s]:.3f}" for s in range(0, args.steps, max(1, args.steps // 5)))
        print(f"{name:<17} last tenth {tail:.4f} (gap {tail - first:+.4f}); along the way {marks}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                figure = {"bench": "gap", "preset": args.preset, "variant": name, "steps": args.steps}
                f.write(json.dumps(figure | {"tail_loss": tail, "gap": tail - first, "losses": losses}) + "\n")


if __name__ == "__main__":
    main()

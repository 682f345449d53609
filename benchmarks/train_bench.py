#!/usr/bin/env python3
"""Training throughput, MFU and memory per preset: plain torch against miniplm's trainer, in one run.

    python benchmarks/train_bench.py --preset tiny tiny-4l                  # CPU
    python benchmarks/train_bench.py --preset qwen-1.2b qwen-200m           # one GPU: every variant

Random tokens (vocabulary 151,936 for the paper's presets, 32,768 for tiny
ones) in rows of --seq-len tokens, a global batch of --batch-tokens. Variants:
- plain: the Hugging Face model in float32 under bf16 autocast (on a GPU),
  full logits and cross-entropy, torch's AdamW, --micro rows a pass (the
  naive baseline, its own loop);
- every other variant runs the trainer's own code (training/trainer.py:
  `prepare`, then `train_step` per step, as `miniplm train` does): DeepSpeed
  ZeRO-1 in bf16 with float32 master weights, fused AdamW, the loss from the
  hidden states, with the settings its name says:
  rows (today's settings: --micro rows a pass, liger-kernel's layers and
  cut-cross-entropy when installed), auto (the new default: the micro-batch
  measured to fit), +layers / +model / +step (compile each decoder layer, the
  whole body, or body and loss in one graph), +graphs (the step as CUDA
  graphs), +float8 (torchao's float8 matmuls).
MFU counts every matmul of the forward and backward pass against the matmul
rate measured in the same run, and on a GPU against the card's datasheet bf16
dense peak (what other trainers publish). Each variant runs in a process of its
own (a kernel that crashes, or memory one leaves behind, spoils no other), and
--json appends each figure as it is measured, so a run cut short keeps what it had.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from miniplm.config import StudentConfig
from miniplm.corpus.tokens import TokenRows, write_rows
from miniplm.models.flops import datasheet_peak, forward_flops_per_token, matmul_rate, sync
from miniplm.models.presets import qwen_config
from miniplm.training.data import RowPlan
from miniplm.training.engine import build_model
from miniplm.training.launch import init_distributed
from miniplm.training.trainer import prepare, train_step

# name -> the student's settings over the benchmark's own
VARIANTS = {  # in the order a GPU run times them: what matters most first, as a time limit may cut it short
    "rows": {},
    "auto+step": {"micro_batch": None, "compile": "step"},
    "auto": {"micro_batch": None},
    "auto+model": {"micro_batch": None, "compile": "model"},
    "auto+step+graphs": {"micro_batch": None, "compile": "step", "cuda_graphs": True},
    "auto+step+float8": {"micro_batch": None, "compile": "step", "float8": True},
    "auto+layers": {"micro_batch": None, "compile": "layers"},
}
GPU_VARIANTS = ["plain", *VARIANTS]
RESULT = "RESULT "  # the line a variant's own process prints its figures on
CPU_VARIANTS = ["plain", "rows", "auto+step", "auto"]


class VocabStub:
    """Stands in for a tokenizer: build_model needs only its size and special tokens."""

    def __init__(self, size: int):
        self.size, self.bos_token_id, self.eos_token_id = size, 0, 1

    def __len__(self) -> int:
        return self.size


def timed(step, steps: int, device: str, warmup: int = 2) -> float:
    """Seconds that `steps` calls of `step` take, after `warmup` calls not timed (compiling included)."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - start


def plain_step(student: StudentConfig, vocab: int, seq_len: int, device: str, rows: TokenRows, micro: int):
    model = build_model(
        student.model_copy(update={"kernels": "torch"}), VocabStub(vocab), seq_len, torch.float32, device
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    on_cuda = device.startswith("cuda")
    accumulation = student.batch_tokens // seq_len // micro
    batch = torch.from_numpy(np.stack([rows[i] for i in range(micro)]).astype(np.int64)).to(device)

    def step():
        for _ in range(accumulation):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
                logits = model(input_ids=batch[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
            )
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step, f"{micro} rows x {accumulation}"


def trainer_step(student: StudentConfig, vocab: int, seq_len: int, device: str, rows: TokenRows, micro: int):
    run = prepare(student, VocabStub(vocab), seq_len, device)
    plan = RowPlan(len(rows), run.rows_per_step, seed=0)
    count = iter(range(10**9))

    def step():
        train_step(run, rows, plan, next(count), 1e-4, device)

    return run.engine, step, f"{run.micro.rows} rows x {run.micro.accumulation}"


def random_rows(folder: Path, n: int, seq_len: int, vocab: int) -> TokenRows:
    write_rows(folder / "shard-00000.arrow", np.random.default_rng(0).integers(2, vocab, (n, seq_len + 1)))
    return TokenRows(folder)


def measure(preset: str, name: str, args, device: str, folder: Path) -> dict:
    """One variant's figures for one preset, measured in this process."""
    bf16 = device.startswith("cuda")
    vocab = 32768 if preset.startswith("tiny") else 151936
    seq_len = args.seq_len
    student = StudentConfig(
        name="bench", preset=preset, tokens="bench", steps=args.steps, micro_batch=args.micro,
        batch_tokens=args.batch_tokens, gradient_checkpointing=False,
    )  # fmt: skip
    rows = random_rows(folder, 2 * args.batch_tokens // seq_len, seq_len, vocab)
    flops = 3 * forward_flops_per_token(qwen_config(preset, vocab, seq_len, 0, 1), (seq_len + 1) / 2)
    rate = args.matmul_tflops * 1e12  # measured once, by the parent: every variant against the same rate
    sheet = datasheet_peak(device) if bf16 else None
    config = student if name == "plain" else StudentConfig(**student.model_copy(update=VARIANTS[name]).model_dump())
    make = plain_step if name == "plain" else trainer_step
    module, step, micro = make(config, vocab, seq_len, device, rows, args.micro)
    params = sum(p.numel() for p in module.parameters())
    tokens_per_s = args.steps * args.batch_tokens / timed(step, args.steps, device)
    return {
        "bench": "train", "preset": preset, "device": device, "variant": name, "seq_len": seq_len,
        "batch_tokens": args.batch_tokens, "micro": micro, "params": params, "tok_s": tokens_per_s,
        "mfu": tokens_per_s * flops / rate, "mfu_datasheet": tokens_per_s * flops / sheet if sheet else None,
        "matmul_tflops": rate / 1e12, "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if bf16 else None,
    }  # fmt: skip


def in_own_process(preset: str, name: str, argv: list[str]) -> dict | str:
    """`measure` in a process of its own: a variant that crashes (a kernel's illegal memory access
    ends the process) or leaks GPU memory leaves the others as they were. Its figures, or why not."""
    cmd = [sys.executable, __file__, *argv, "--preset", preset, "--variants", name, "--in-process"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line.removeprefix(RESULT))
    last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-1:] or ["no output"]
    return f"exit {done.returncode}: {last[0][:300]}"


def report(figure: dict, plain: float, json_path: str | None) -> None:
    figure["x_plain"] = figure["tok_s"] / plain
    sheet = f"{figure['mfu_datasheet']:.1%}" if figure["mfu_datasheet"] is not None else "-"
    memory = f"{figure['peak_memory_gb']:.1f}" if figure["peak_memory_gb"] is not None else "-"
    print(
        f"{figure['preset']:<10} {figure['variant']:<17} {figure['params'] / 1e6:>8.1f}M {figure['micro']:>12} "
        f"{figure['tok_s']:>12,.0f} {figure['x_plain']:>7.2f} {figure['mfu']:>7.1%} {sheet:>7} {memory:>7}",
        flush=True,
    )
    if json_path:  # as each figure comes: a run cut short keeps what it measured
        with open(json_path, "a") as f:
            f.write(json.dumps(figure) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["tiny", "tiny-4l"])
    parser.add_argument("--seq-len", type=int, default=None, help="default: 1024 on GPU, 256 on CPU")
    parser.add_argument("--micro", type=int, default=None, help="rows a pass for plain and rows; default: 8, CPU 4")
    parser.add_argument(
        "--batch-tokens", type=int, default=None, help="global batch; default: 131,072 on GPU, 4,096 on CPU"
    )
    parser.add_argument("--variants", nargs="+", choices=GPU_VARIANTS, help="default: all on GPU; a CPU's four")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps timed, after two not timed")
    parser.add_argument("--json", help="append the figures to this file (JSON lines)")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # one variant, here
    parser.add_argument("--matmul-tflops", type=float, help=argparse.SUPPRESS)  # the parent's measured rate
    args = parser.parse_args()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    gpu = device != "cpu"
    args.seq_len = args.seq_len or (1024 if gpu else 256)
    args.micro = args.micro or (8 if gpu else 4)
    args.batch_tokens = args.batch_tokens or (131_072 if gpu else 4_096)
    args.variants = args.variants or (GPU_VARIANTS if gpu else CPU_VARIANTS)
    if args.in_process:
        init_distributed()  # here only: the processes of the variants each join a group of their own
        with tempfile.TemporaryDirectory() as folder:
            print(RESULT + json.dumps(measure(args.preset[0], args.variants[0], args, device, Path(folder))))
        return
    card = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"{card}; MFU against the matmul rate measured here and against the datasheet bf16 peak")
    print(
        f"{'preset':<10} {'trainer':<17} {'params':>9} {'micro-batch':>12} {'tokens/s':>12} {'x plain':>7} "
        f"{'MFU':>7} {'MFU@ds':>7} {'mem GB':>7}"
    )
    shared = ["--seq-len", str(args.seq_len), "--micro", str(args.micro), "--batch-tokens", str(args.batch_tokens)]
    rate = matmul_rate(torch.bfloat16 if gpu else torch.float32, device)
    shared += ["--steps", str(args.steps), "--matmul-tflops", str(rate / 1e12)]
    for preset in args.preset:
        plain = float("nan")
        for name in args.variants:
            figure = in_own_process(preset, name, shared)
            if isinstance(figure, str):
                print(f"{preset:<10} {name:<17} failed: {figure}", flush=True)
                continue
            plain = figure["tok_s"] if name == "plain" else plain
            report(figure, plain, args.json)


if __name__ == "__main__":
    main()

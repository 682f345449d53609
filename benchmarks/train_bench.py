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
dense peak (what other trainers publish). --json appends each figure as it is
measured, so a run cut short keeps what it had.
"""

from __future__ import annotations

import argparse
import gc
import json
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


def bench(preset: str, args, device: str, folder: Path) -> None:
    bf16 = device.startswith("cuda")
    vocab = 32768 if preset.startswith("tiny") else 151936
    seq_len = args.seq_len
    student = StudentConfig(
        name="bench", preset=preset, tokens="bench", steps=args.steps, micro_batch=args.micro,
        batch_tokens=args.batch_tokens, gradient_checkpointing=False,
    )  # fmt: skip
    rows = random_rows(folder / preset, 2 * args.batch_tokens // seq_len, seq_len, vocab)
    flops = 3 * forward_flops_per_token(qwen_config(preset, vocab, seq_len, 0, 1), (seq_len + 1) / 2)
    rate = matmul_rate(torch.bfloat16 if bf16 else torch.float32, device)
    sheet = datasheet_peak(device) if bf16 else None
    plain = float("nan")
    for name in args.variants:
        config = student if name == "plain" else student.model_copy(update=VARIANTS[name])
        make = plain_step if name == "plain" else trainer_step
        if bf16:
            torch.cuda.reset_peak_memory_stats()
        try:
            module, step, micro = make(StudentConfig(**config.model_dump()), vocab, seq_len, device, rows, args.micro)
            params = sum(p.numel() for p in module.parameters())
            seconds = timed(step, args.steps, device)
        except Exception as e:  # one variant's failure (a kernel that does not build) leaves the others
            print(f"{preset:<10} {name:<17} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        finally:
            module = step = None
            gc.collect()
        memory = torch.cuda.max_memory_allocated() / 2**30 if bf16 else None
        if bf16:
            torch.cuda.empty_cache()
        tokens_per_s = args.steps * args.batch_tokens / seconds
        plain = tokens_per_s if name == "plain" else plain
        mfu, mfu_sheet = tokens_per_s * flops / rate, (tokens_per_s * flops / sheet if sheet else None)
        sheet_text, memory_text = f"{mfu_sheet:.1%}" if sheet else "-", f"{memory:.1f}" if bf16 else "-"
        print(
            f"{preset:<10} {name:<17} {params / 1e6:>8.1f}M {micro:>12} {tokens_per_s:>12,.0f} "
            f"{tokens_per_s / plain:>7.2f} {mfu:>7.1%} {sheet_text:>7} {memory_text:>7}",
            flush=True,
        )
        if args.json:
            figure = {
                "bench": "train", "preset": preset, "device": device, "variant": name, "seq_len": seq_len,
                "batch_tokens": args.batch_tokens, "micro": micro, "params": params, "tok_s": tokens_per_s,
                "x_plain": tokens_per_s / plain, "mfu": mfu, "mfu_datasheet": mfu_sheet,
                "matmul_tflops": rate / 1e12, "peak_memory_gb": memory,
            }  # fmt: skip
            with open(args.json, "a") as f:
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
    args = parser.parse_args()
    init_distributed()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    gpu = device != "cpu"
    args.seq_len = args.seq_len or (1024 if gpu else 256)
    args.micro = args.micro or (8 if gpu else 4)
    args.batch_tokens = args.batch_tokens or (131_072 if gpu else 4_096)
    args.variants = args.variants or (GPU_VARIANTS if gpu else CPU_VARIANTS)
    card = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"{card}; MFU against the matmul rate measured here and against the datasheet bf16 peak")
    print(
        f"{'preset':<10} {'trainer':<17} {'params':>9} {'micro-batch':>12} {'tokens/s':>12} {'x plain':>7} "
        f"{'MFU':>7} {'MFU@ds':>7} {'mem GB':>7}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.preset:
            bench(preset, args, device, Path(folder))


if __name__ == "__main__":
    main()

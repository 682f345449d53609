#!/usr/bin/env python3
"""Training throughput and MFU per preset, with miniplm's DeepSpeed set-up.

    python benchmarks/train_bench.py --preset tiny tiny-4l                      # CPU
    python benchmarks/train_bench.py --preset qwen-200m qwen-500m qwen-1.2b     # one GPU

Random tokens (vocabulary 151,936 for the paper's presets, 32,768 for tiny
ones), micro-batches of --micro rows of --seq-len tokens, ZeRO-1, bf16 on GPU
and fp32 on CPU. MFU counts every matmul of the forward and backward pass
(3x the forward: projections, attention scores and values, MLP, lm_head)
against the matmul rate measured in the same run. Target on one H100:
>= 45% for qwen-1.2b at sequence length 1024 or 2048.
"""

from __future__ import annotations

import argparse
import time

import torch

from miniplm.config import StudentConfig
from miniplm.models.flops import forward_flops_per_token, matmul_rate, sync
from miniplm.training.launch import set_distributed_env
from miniplm.training.trainer import _loss, build_model, deepspeed_config


class VocabStub:
    """Stands in for a tokenizer: build_model needs only its size and special tokens."""

    def __init__(self, size: int):
        self.size, self.bos_token_id, self.eos_token_id = size, 0, 1

    def __len__(self) -> int:
        return self.size


def timed(step, steps: int, device: str, warmup: int = 2) -> float:
    """Seconds that `steps` calls of `step` take, after `warmup` calls not timed."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - start


def bench(preset: str, seq_len: int, micro: int, steps: int, device: str) -> None:
    import deepspeed

    bf16 = device.startswith("cuda")
    vocab = 32768 if preset.startswith("tiny") else 151936
    student = StudentConfig(name="bench", preset=preset, tokens="bench", steps=steps, micro_batch=micro,
                            batch_tokens=micro * seq_len, gradient_checkpointing=False)
    model = build_model(student, VocabStub(vocab), seq_len, torch.bfloat16 if bf16 else torch.float32)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=deepspeed_config(student, 1, bf16))
    batch = torch.randint(2, vocab, (micro, seq_len + 1), device=device)

    def step():
        loss = _loss(engine, batch)
        engine.backward(loss)
        engine.step()

    tokens_per_s = steps * micro * seq_len / timed(step, steps, device)
    flops = 3 * forward_flops_per_token(model.config, (seq_len + 1) / 2)
    rate = matmul_rate(torch.bfloat16 if bf16 else torch.float32, device)
    print(f"{preset:<10} {params / 1e6:>8.1f}M {seq_len:>6} {micro:>5} {tokens_per_s:>12,.0f} "
          f"{flops / 1e9:>10.2f} {rate / 1e12:>8.2f} {tokens_per_s * flops / rate:>6.1%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["tiny", "tiny-4l"])
    parser.add_argument("--seq-len", type=int, default=None, help="default: 1024 on GPU, 256 on CPU")
    parser.add_argument("--micro", type=int, default=None, help="rows per step; default: 8 on GPU, 4 on CPU")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    set_distributed_env()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seq_len = args.seq_len or (1024 if device == "cuda" else 256)
    micro = args.micro or (8 if device == "cuda" else 4)
    print(f"{'preset':<10} {'params':>9} {'seq':>6} {'micro':>5} {'tokens/s':>12} {'GFLOP/tok':>10} "
          f"{'TFLOP/s':>8} {'MFU':>6}")
    for preset in args.preset:
        bench(preset, seq_len, micro, args.steps, device)


if __name__ == "__main__":
    main()

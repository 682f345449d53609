#!/usr/bin/env python3
"""Training throughput and MFU per preset: plain torch against miniplm's trainer, in one run.

    python benchmarks/train_bench.py --preset tiny tiny-4l                          # CPU
    python benchmarks/train_bench.py --preset qwen-1.2b qwen-200m --compile         # one GPU

Random tokens (vocabulary 151,936 for the paper's presets, 32,768 for tiny
ones), micro-batches of --micro rows of --seq-len tokens, --accumulation of them
per optimizer step (as in training, where a step is 512 rows):
- plain: the Hugging Face model in float32 under bf16 autocast (on a GPU),
  full logits and cross-entropy, torch's AdamW (the naive baseline);
- miniplm: the trainer's set-up: DeepSpeed ZeRO-1 in bf16 with float32 master
  weights and gradient accumulation, fused AdamW, the loss straight from the
  hidden states (cut-cross-entropy / liger-kernel on CUDA when installed, else
  chunked), liger-kernel's RMSNorm and SwiGLU when installed;
- miniplm+compile: the same with each decoder layer torch.compiled instead of
  liger's layers (--compile).
MFU counts every matmul of the forward and backward pass (3x the forward:
projections, attention scores and values, MLP, lm_head), against the matmul
rate measured in the same run, and on a GPU against the card's datasheet bf16
dense peak (what other trainers publish). --json appends the figures to a file.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from miniplm.config import StudentConfig
from miniplm.models.flops import datasheet_peak, forward_flops_per_token, matmul_rate, sync
from miniplm.models.presets import qwen_config
from miniplm.training.launch import init_distributed
from miniplm.training.trainer import build_model, deepspeed_config, objective


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


def plain_step(student: StudentConfig, vocab: int, seq_len: int, device: str, batch: torch.Tensor, accumulation: int):
    model = build_model(
        student.model_copy(update={"kernels": "torch"}), VocabStub(vocab), seq_len, torch.float32, device
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    on_cuda = device.startswith("cuda")

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

    return model, step


def miniplm_step(student: StudentConfig, vocab: int, seq_len: int, device: str, batch: torch.Tensor, accumulation: int):
    import deepspeed

    bf16 = device.startswith("cuda")
    model = build_model(student, VocabStub(vocab), seq_len, torch.bfloat16 if bf16 else torch.float32, device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=bf16
    )
    engine, _, _, _ = deepspeed.initialize(
        model=objective(student, model, device),
        optimizer=optimizer,
        config=deepspeed_config(student, accumulation, bf16),
    )

    def step():
        for _ in range(accumulation):  # DeepSpeed steps the optimizer on the last micro-batch
            loss = engine(batch)
            engine.backward(loss)
            engine.step()

    return engine, step


def bench(
    preset: str,
    seq_len: int,
    micro: int,
    accumulation: int,
    steps: int,
    device: str,
    compile: bool,
    json_path: str | None,
) -> None:
    bf16 = device.startswith("cuda")
    vocab = 32768 if preset.startswith("tiny") else 151936
    student = StudentConfig(
        name="bench",
        preset=preset,
        tokens="bench",
        steps=steps,
        micro_batch=micro,
        batch_tokens=micro * seq_len * accumulation,
        gradient_checkpointing=False,
    )
    batch = torch.randint(2, vocab, (micro, seq_len + 1), device=device)
    flops = 3 * forward_flops_per_token(qwen_config(preset, vocab, seq_len, 0, 1), (seq_len + 1) / 2)
    rate = matmul_rate(torch.bfloat16 if bf16 else torch.float32, device)
    sheet = datasheet_peak(device) if bf16 else None
    rows: list[tuple] = []
    variants = [("plain", plain_step, student), ("miniplm", miniplm_step, student)]
    if compile:
        variants.append(("miniplm+compile", miniplm_step, student.model_copy(update={"compile": True})))
    for name, make, config in variants:
        try:
            module, step = make(config, vocab, seq_len, device, batch, accumulation)
            params = sum(p.numel() for p in module.parameters())
            seconds = timed(step, steps, device)  # after two untimed steps: warm-up (and compiling, when asked)
        except Exception as e:  # one variant's failure (a kernel that does not build) leaves the others
            print(f"{preset:<10} {name:<16} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        finally:
            module = step = None
            gc.collect()
            if bf16:
                torch.cuda.empty_cache()
        tokens_per_s = steps * accumulation * micro * seq_len / seconds
        rows.append(
            (name, params, tokens_per_s, tokens_per_s * flops / rate, tokens_per_s * flops / sheet if sheet else None)
        )
        plain = rows[0][2] if rows[0][0] == "plain" else float("nan")
        sheet_text = f"{rows[-1][4]:>7.1%}" if sheet else f"{'-':>7}"
        print(
            f"{preset:<10} {name:<16} {params / 1e6:>8.1f}M {seq_len:>6} {micro:>3}x{accumulation:<2} "
            f"{tokens_per_s:>12,.0f} {tokens_per_s / plain:>7.2f} {flops / 1e9:>10.2f} {rate / 1e12:>8.1f} "
            f"{rows[-1][3]:>7.1%} {sheet_text}",
            flush=True,
        )
        if json_path:  # the figures so far: a run cut short by a time limit keeps what it measured
            with open(json_path, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "bench": "train",
                            "preset": preset,
                            "device": device,
                            "seq_len": seq_len,
                            "micro": micro,
                            "accumulation": accumulation,
                            "matmul_tflops": rate / 1e12,
                            "rows": [dict(zip(("name", "params", "tok_s", "mfu", "mfu_datasheet"), r)) for r in rows],
                        }
                    )
                    + "\n"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["tiny", "tiny-4l"])
    parser.add_argument("--seq-len", type=int, default=None, help="default: 1024 on GPU, 256 on CPU")
    parser.add_argument("--micro", type=int, default=None, help="rows per step; default: 8 on GPU, 4 on CPU")
    parser.add_argument(
        "--accumulation",
        type=int,
        default=None,
        help="micro-batches per optimizer step, as in training; default: 4 on GPU, 1 on CPU",
    )
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps timed")
    parser.add_argument("--compile", action="store_true", help="also time miniplm with compiled decoder layers")
    parser.add_argument("--json", help="append the figures to this file (JSON lines)")
    args = parser.parse_args()
    init_distributed()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    seq_len = args.seq_len or (1024 if device != "cpu" else 256)
    micro = args.micro or (8 if device != "cpu" else 4)
    accumulation = args.accumulation or (4 if device != "cpu" else 1)
    card = torch.cuda.get_device_name() if device != "cpu" else "cpu"
    print(f"{card}; MFU against the matmul rate measured here and against the datasheet bf16 peak")
    print(
        f"{'preset':<10} {'trainer':<16} {'params':>9} {'seq':>6} {'rows':>6} {'tokens/s':>12} {'x plain':>7} "
        f"{'GFLOP/tok':>10} {'TFLOP/s':>8} {'MFU':>7} {'MFU@ds':>7}"
    )
    for preset in args.preset:
        bench(preset, seq_len, micro, accumulation, args.steps, device, args.compile, args.json)


if __name__ == "__main__":
    main()

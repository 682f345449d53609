#!/usr/bin/env python3
"""What distillation costs in training throughput: the same student trained without a teacher, with
the teacher in the loop (online KD) and from stored top-k log-probs (offline KD), timed in one run.

    python benchmarks/kd_bench.py       # CPU: tiny-4l, a SmolLM2-135M-shaped teacher
    python benchmarks/kd_bench.py --student qwen-200m --teacher qwen-1.8b   # one GPU: the paper's KD shapes
    python benchmarks/kd_bench.py --storage    # each storage mode's bytes per token and what it keeps

Random weights and random tokens; the teacher is saved to a temporary folder and loaded the way
training loads it (bfloat16 on GPU, float32 on CPU); offline KD reads top-k log-probs written in the
teacher-logits stage's format. MiniPLM's loss (0.5 CE + 0.5 forward KL) through miniplm's DeepSpeed
set-up (ZeRO-1, torch AdamW). tokens/s counts the student's tokens; MFU counts every matmul of the
student's forward and backward and, online, the teacher's forward, against the matmul rate measured
in the same run. --compile times the student compiled as the trainer compiles it (with
distillation, `step` compiles the body; the KD loss stays eager). --json appends the figures to a
file (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from train_bench import VocabStub, timed  # benchmarks/, the script's folder

from miniplm.config import KDConfig, StudentConfig
from miniplm.models.flops import forward_flops_per_token, matmul_rate
from miniplm.training.distill import Distillation
from miniplm.training.engine import build_model, deepspeed_config, objective, speed_up
from miniplm.training.launch import set_distributed_env
from miniplm.training.logit_files import LogitsLayout, TeacherLogitRows, write_logits
from miniplm.training.teacher import Teacher

TEACHERS = {  # Llama/Qwen shapes: (hidden, layers, FFN, heads, kv heads, vocab)
    "smollm2-135m": dict(
        arch="llama",
        hidden_size=576,
        num_hidden_layers=30,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "qwen-1.8b": dict(
        arch="qwen2",
        hidden_size=2048,
        num_hidden_layers=24,
        intermediate_size=5504,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=151936,
        tie_word_embeddings=False,
    ),
}


def save_teacher(shape: str, folder: Path, seq_len: int) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    spec = dict(TEACHERS[shape])
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[spec.pop("arch")]
    config = config_cls(max_position_embeddings=max(seq_len, 2048), **spec)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)


def stored_logits(
    folder: Path, rows: int, seq_len: int, k: int, vocab: int, mode: str = "top_k", dtype: str = "float16"
) -> TeacherLogitRows:
    """Random top-k log-probs (or k random draws) for `rows` rows, in the teacher-logits stage's format."""
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(rows * seq_len)]).reshape(rows, seq_len, k)
    logp = np.sort(np.log(rng.dirichlet(np.ones(k + 1), size=(rows, seq_len))), axis=-1)[..., ::-1]
    layout = LogitsLayout(seq_len, k, vocab, 1.0, dtype, mode)
    rest = logp[..., k] if layout.has_rest else None
    write_logits(folder / "shard-00000.arrow", layout, [layout.table(np.sort(ids, -1), logp[..., :k], rest)])
    return TeacherLogitRows(folder)


def bench(args, device: str, folder: Path) -> None:
    import deepspeed

    bf16 = device.startswith("cuda")
    vocab = TEACHERS[args.teacher]["vocab_size"]
    student = StudentConfig(
        name="bench",
        preset=args.student,
        tokens="bench",
        steps=args.steps,
        micro_batch=args.micro,
        batch_tokens=args.micro * args.seq_len,
        compile=args.compile,
    )
    model = build_model(student, VocabStub(vocab), args.seq_len, torch.bfloat16 if bf16 else torch.float32, device)
    module = objective(student, model, device)
    speed_up(model, module, student)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        config=deepspeed_config(student, args.micro, 1, bf16),
    )
    save_teacher(args.teacher, folder / "teacher", args.seq_len)
    teacher = Teacher(str(folder / "teacher"), vocab, "auto", device)
    stored = stored_logits(folder / "logits", args.micro, args.seq_len, args.top_k, vocab)
    kd = KDConfig(loss="forward_kl", weight=0.5)
    teacher_flops = teacher.flops_per_token((args.seq_len + 1) / 2)
    online = Distillation(kd, vocab, device, teacher)
    ways = {"no KD": (None, 0.0), "online KD": (online, teacher_flops)}
    if online.fused:  # liger-kernel's fused linear JSD; the chunked torch loss beside it
        unfused = Distillation(kd, vocab, device, teacher)
        unfused.fused = False
        ways |= {"online KD (liger)": ways.pop("online KD"), "online KD (torch)": (unfused, teacher_flops)}
    compiled = args.compile != "off"  # the stored-teacher chunks compiled with the student, as training does
    ways[f"offline KD (top-{args.top_k})"] = (Distillation(kd, vocab, device, stored, compiled), 0.0)
    small = stored_logits(folder / "uint8", args.micro, args.seq_len, args.top_k, vocab, dtype="uint8")
    ways[f"offline KD (top-{args.top_k} uint8)"] = (Distillation(kd, vocab, device, small, compiled), 0.0)
    draws = stored_logits(folder / "sampled", args.micro, args.seq_len, 12, vocab, "sampled", "uint8")
    ways["offline KD (12 draws uint8)"] = (Distillation(kd, vocab, device, draws, compiled), 0.0)
    batch = torch.randint(2, vocab, (args.micro, args.seq_len + 1), device=device)
    rows = np.arange(args.micro)
    student_flops = 3 * forward_flops_per_token(model.config, (args.seq_len + 1) / 2)
    rate = matmul_rate(torch.bfloat16 if bf16 else torch.float32, device)
    print(
        f"student {args.student} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M), teacher {args.teacher} "
        f"({sum(p.numel() for p in teacher.model.parameters()) / 1e6:.1f}M), {args.micro} x {args.seq_len} tokens per "
        f"step, compile {args.compile}, {device}, matmul {rate / 1e12:.2f} TFLOP/s"
    )
    print(f"{'':<28} {'tokens/s':>10} {'x no KD':>8} {'GFLOP/tok':>10} {'MFU':>6}")
    base, figures = None, []
    for label, (distill, teacher_flops) in ways.items():
        engine.module.distill = distill

        def step():
            loss = engine(batch, rows)
            engine.backward(loss)
            engine.step()

        tokens_per_s = args.steps * args.micro * args.seq_len / timed(step, args.steps, device)
        base = base or tokens_per_s
        flops = student_flops + teacher_flops
        print(
            f"{label:<28} {tokens_per_s:>10,.0f} {tokens_per_s / base:>8.2f} {flops / 1e9:>10.2f} "
            f"{tokens_per_s * flops / rate:>6.1%}",
            flush=True,
        )
        figures.append({"name": label, "tok_s": tokens_per_s, "mfu": tokens_per_s * flops / rate})
        if args.json:  # the figures so far: a run cut short by a time limit keeps what it measured
            with open(args.json, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "bench": "kd",
                            "student": args.student,
                            "teacher": args.teacher,
                            "device": device,
                            "seq_len": args.seq_len,
                            "top_k": args.top_k,
                            "compile": args.compile,
                            "rows": figures,
                        }
                    )
                    + "\n"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default=None, help="a preset; default: tiny-4l on CPU, qwen-200m on GPU")
    parser.add_argument(
        "--teacher", choices=list(TEACHERS), default=None, help="default: smollm2-135m on CPU, qwen-1.8b on GPU"
    )
    parser.add_argument("--seq-len", type=int, default=None, help="default: 1024 on GPU, 256 on CPU")
    parser.add_argument("--micro", type=int, default=None, help="rows per step; default: 8 on GPU, 4 on CPU")
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument(
        "--compile", choices=["off", "layers", "model", "step"], default="off", help="the student's compile setting"
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="append the figures to this file (JSON lines)")
    parser.add_argument(
        "--storage",
        action="store_true",
        help="instead: each storage mode's bytes per token and what it keeps of the bundled teacher "
        "(benchmarks/kd_storage.py)",
    )
    parser.add_argument("--rows", type=int, default=32, help="--storage: rows of the bundled corpus")
    args = parser.parse_args()
    if args.storage:
        from kd_storage import storage  # benchmarks/, the script's folder

        storage(args.rows, args.seq_len or 128, args.json)
        return
    set_distributed_env()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    args.student = args.student or ("qwen-200m" if gpu else "tiny-4l")
    args.teacher = args.teacher or ("qwen-1.8b" if gpu else "smollm2-135m")
    args.seq_len = args.seq_len or (1024 if gpu else 256)
    args.micro = args.micro or (8 if gpu else 4)
    with tempfile.TemporaryDirectory() as tmp:
        bench(args, device, Path(tmp))


if __name__ == "__main__":
    main()

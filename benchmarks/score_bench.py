#!/usr/bin/env python3
"""Scoring throughput: a plain Hugging Face loop against miniplm's scorer, in one run.

    python benchmarks/score_bench.py --shape tiny                           # CPU
    python benchmarks/score_bench.py --shape qwen-1.8b ref-104m --compile   # one GPU

Every scorer reads the same documents (lognormal lengths, median ~400 tokens,
at most 2,048) with the same random-weight Qwen2 model:
- plain: batches of 8 in arrival order, padded, full logits and log-softmax
  (what one writes first; the naive baseline);
- sorted: miniplm's padded path: windows in length-sorted batches under a
  token budget, the vocabulary projection a chunk of scored positions at a time;
- packed: windows back to back in streams of the token budget (flash-attn
  varlen or flex_attention on CUDA, a dense block mask on the CPU), the
  projection through the fused kernel this machine has (cut-cross-entropy or
  liger-kernel on CUDA);
- packed+compile: the same with each decoder layer torch.compiled (--compile).
It prints tokens/s, the ratio to plain, the largest disagreement with plain,
and the fraction of the FLOP limit: FLOPs per token (every matmul:
projections, MLP, attention scores and values, lm_head) over the matmul rate
measured here in the model's dtype, and on a GPU over the card's datasheet
bf16 peak. --json appends the figures to a file (the device script's table).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from miniplm.models.flops import datasheet_peak, forward_flops_per_token, matmul_rate, sync
from miniplm.models.kernels import attention_implementation
from miniplm.scoring.logprobs import Scorer
from miniplm.scoring.windows import windows_for

SHAPES = {
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=704,
        num_attention_heads=4,
        vocab_size=32768,
        tie_word_embeddings=False,
    ),
    "qwen-1.8b": dict(
        hidden_size=2048,
        num_hidden_layers=24,
        intermediate_size=5504,
        num_attention_heads=16,
        vocab_size=151936,
        tie_word_embeddings=False,
    ),
    "ref-104m": dict(
        hidden_size=512,
        num_hidden_layers=8,
        intermediate_size=1408,
        num_attention_heads=8,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}


def documents(n: int, seed: int = 0, vocab: int = 32768) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(400), 0.8, size=n).astype(int), 1, 2048)
    return [rng.integers(10, vocab, size=int(length)) for length in lengths]


def plain_loop(model, docs, bos: int, device: str) -> list[float]:
    """What one writes first: batches of 8 as they come, padded, full log-softmax."""
    sums = []
    with torch.no_grad():
        for i in range(0, len(docs), 8):
            batch = docs[i : i + 8]
            width = max(len(d) for d in batch)
            ids = torch.zeros(len(batch), width + 1, dtype=torch.long)
            mask = torch.zeros(len(batch), width + 1, dtype=torch.long)
            for r, d in enumerate(batch):
                ids[r, : len(d) + 1] = torch.tensor([bos, *d])
                mask[r, : len(d) + 1] = 1
            ids, mask = ids.to(device), mask.to(device)
            logp = torch.log_softmax(model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits.float(), dim=-1)
            tok = logp.gather(2, ids[:, 1:, None]).squeeze(2) * mask[:, 1:]
            sums.extend(tok.sum(1).double().cpu().tolist())
    return sums


def miniplm_scorer(scorer: Scorer, docs, max_length: int) -> list[float]:
    windows = [w for d, seq in enumerate(docs) for w in windows_for(d, len(seq), max_length, 0)]
    batches = scorer.plan(windows)
    sums = np.zeros(len(docs))
    for batch, results in zip(batches, scorer.run(batches, docs)):
        for w, lp in zip(batch, results["m"]):
            sums[w.doc] += float(lp.double().sum())
    return sums.tolist()


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def bench(
    shape: str, n_docs: int, plain_docs: int, batch_tokens: int, device: str, compile: bool, json_path: str | None
) -> None:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = Qwen2Config(
        **SHAPES[shape], num_key_value_heads=SHAPES[shape]["num_attention_heads"], max_position_embeddings=4096
    )
    torch.manual_seed(0)
    padded_attn = attention_implementation(dtype, device)
    packed_attn = attention_implementation(dtype, device, packed=True)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=padded_attn).eval()
    docs = documents(n_docs, vocab=cfg.vocab_size)
    tokens = sum(len(d) for d in docs)
    mean_context = sum(len(d) * (len(d) + 1) / 2 for d in docs) / tokens
    flops = forward_flops_per_token(cfg, mean_context)
    rate = matmul_rate(dtype, device)
    sheet = datasheet_peak(device) if dtype == torch.bfloat16 else None
    limit = rate / flops
    print(
        f"\n{shape} on {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} ({dtype}): {n_docs} documents, "
        f"{tokens:,} tokens (plain: the first {plain_docs}), matmul {rate / 1e12:.1f} TFLOP/s, "
        f"{flops / 1e9:.2f} GFLOP/token, FLOP limit {limit:,.0f} tok/s",
        flush=True,
    )

    def record(rows: list[tuple]) -> None:
        """The figures so far (a run cut short by a time limit keeps what it measured)."""
        if json_path:
            with open(json_path, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "bench": "score",
                            "shape": shape,
                            "device": device,
                            "tokens": tokens,
                            "rows": [
                                dict(zip(("name", "tok_s", "rel_diff", "attention", "projection"), r)) for r in rows
                            ],
                            "limit_tok_s": limit,
                            "sheet_tok_s": sheet / flops if sheet else None,
                        }
                    )
                    + "\n"
                )

    # plain, timed on a prefix of the documents: it is the slow one
    plain_loop(model, docs[:8], 0, device)
    plain, t_plain = timed(lambda: plain_loop(model, docs[:plain_docs], 0, device), device)
    plain_speed = sum(len(d) for d in docs[:plain_docs]) / t_plain
    rows = [("plain", plain_speed, 0.0, padded_attn, "full logits")]
    record(rows)

    variants = [("packed", True, "auto", False), ("sorted", False, "torch", False)]
    if compile:
        variants.append(("packed+compile", True, "auto", True))
    for name, packed, kernels, compiled in variants:
        try:
            model.set_attn_implementation(packed_attn if packed else padded_attn)
            scorer = Scorer(
                {"m": model}, 0, device, packed=packed, batch_tokens=batch_tokens, kernels=kernels, compile=compiled
            )
            miniplm_scorer(scorer, docs[:64], 2048)  # warm-up (and compiling, when asked)
            sums, seconds = timed(lambda: miniplm_scorer(scorer, docs, 2048), device)
        except Exception as e:  # one variant's failure (a kernel that does not build) leaves the others
            print(f"  {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        diff = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(sums, plain))
        rows.append((name, tokens / seconds, diff, model.config._attn_implementation, scorer.kernel))
        record(rows)
        print(f"  {name}: {tokens / seconds:,.0f} tok/s", flush=True)

    print(
        f"{'scorer':<16} {'tok/s':>12} {'x plain':>8} {'of limit':>9} {'of sheet':>9} {'rel diff':>9}"
        "  attention, projection"
    )
    for name, speed, diff, attn, kernel in rows:
        of_sheet = f"{speed * flops / sheet:>9.1%}" if sheet else f"{'-':>9}"
        print(
            f"{name:<16} {speed:>12,.0f} {speed / plain_speed:>8.2f} {speed / limit:>9.1%} {of_sheet} "
            f"{diff:>9.1e}  {attn}, {kernel}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=["tiny"])
    parser.add_argument("--docs", type=int, default=None, help="documents (default: 96 on CPU, 1024 on GPU)")
    parser.add_argument(
        "--plain-docs",
        type=int,
        default=None,
        help="documents the plain loop is timed on (default: all on CPU, 256 on GPU)",
    )
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: 8192 on CPU, 65536 on GPU")
    parser.add_argument("--compile", action="store_true", help="also time packed batches with compiled layers")
    parser.add_argument("--json", help="append the figures to this file (JSON lines)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n_docs = args.docs or (1024 if device == "cuda" else 96)
    for shape in args.shape:
        bench(
            shape,
            n_docs,
            min(args.plain_docs or (256 if device == "cuda" else n_docs), n_docs),
            args.batch_tokens or (65536 if device == "cuda" else 8192),
            device,
            args.compile,
            args.json,
        )


if __name__ == "__main__":
    main()

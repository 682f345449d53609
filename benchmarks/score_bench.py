#!/usr/bin/env python3
"""Scoring throughput: a plain Hugging Face loop against miniplm's scorer, in one run.

    python benchmarks/score_bench.py --shape tiny                 # CPU
    python benchmarks/score_bench.py --shape qwen-1.8b ref-104m   # one GPU

Both score the same documents (lognormal lengths, median ~400 tokens, at most
2,048) with the same random-weight Qwen2 model:
- plain: batches of 8 in arrival order, padded, full logits and log-softmax;
- miniplm: windows in length-sorted batches under a token budget, hidden
  states projected onto the vocabulary a chunk of scored positions at a time.
It prints tokens/s of each, their ratio, the largest disagreement between
the two, and each one's fraction of the FLOP limit: FLOPs per token (every
matmul: projections, MLP, attention scores and values, lm_head) over the
matmul rate measured here in the model's dtype.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from miniplm.models.flops import forward_flops_per_token, matmul_rate, sync
from miniplm.models.loading import attention_implementation
from miniplm.scoring.score import batch_logprobs
from miniplm.scoring.windows import plan_batches, windows_for

SHAPES = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, intermediate_size=704, num_attention_heads=4, vocab_size=32768,
                 tie_word_embeddings=False),
    "qwen-1.8b": dict(hidden_size=2048, num_hidden_layers=24, intermediate_size=5504, num_attention_heads=16,
                      vocab_size=151936, tie_word_embeddings=False),
    "ref-104m": dict(hidden_size=512, num_hidden_layers=8, intermediate_size=1408, num_attention_heads=8,
                     vocab_size=151936, tie_word_embeddings=True),
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


def miniplm_scorer(model, docs, bos: int, device: str, batch_tokens: int, max_length: int) -> list[float]:
    windows = [w for d, seq in enumerate(docs) for w in windows_for(d, len(seq), max_length, 0)]
    sums = np.zeros(len(docs))
    for batch in plan_batches(windows, batch_tokens):
        for w, lp in zip(batch, batch_logprobs(batch, docs, {"m": model}, bos, device)["m"]):
            sums[w.doc] += float(lp.double().sum())
    return sums.tolist()


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def bench(shape: str, n_docs: int, batch_tokens: int, device: str) -> None:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = Qwen2Config(**SHAPES[shape], num_key_value_heads=SHAPES[shape]["num_attention_heads"],
                      max_position_embeddings=4096)
    torch.manual_seed(0)
    attn = attention_implementation() if dtype == torch.bfloat16 else "sdpa"
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn).to(device).eval()
    docs = documents(n_docs, vocab=cfg.vocab_size)
    tokens = sum(len(d) for d in docs)
    mean_context = sum(len(d) * (len(d) + 1) / 2 for d in docs) / tokens
    rate = matmul_rate(dtype, device)
    limit = rate / forward_flops_per_token(cfg, mean_context)

    miniplm_scorer(model, docs[:8], 0, device, batch_tokens, 2048)  # warm-up
    plain_loop(model, docs[:8], 0, device)
    fast, t_fast = timed(lambda: miniplm_scorer(model, docs, 0, device, batch_tokens, 2048), device)
    plain, t_plain = timed(lambda: plain_loop(model, docs, 0, device), device)
    diff = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(fast, plain))

    print(f"\n{shape} on {device} ({dtype}, {attn}): {n_docs} documents, {tokens:,} tokens, "
          f"matmul {rate / 1e12:.2f} TFLOP/s, {forward_flops_per_token(cfg, mean_context) / 1e9:.2f} GFLOP/token, "
          f"FLOP limit {limit:,.0f} tok/s")
    print(f"{'scorer':<10} {'tok/s':>12} {'x plain':>8} {'of limit':>9}")
    for name, seconds in (("plain", t_plain), ("miniplm", t_fast)):
        speed = tokens / seconds
        print(f"{name:<10} {speed:>12,.0f} {t_plain / seconds:>8.2f} {speed / limit:>9.1%}")
    print(f"largest relative difference between the two: {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=["tiny"])
    parser.add_argument("--docs", type=int, default=None, help="documents (default: 96 on CPU, 2048 on GPU)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: 8192 on CPU, 65536 on GPU")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for shape in args.shape:
        bench(shape, args.docs or (2048 if device == "cuda" else 96),
              args.batch_tokens or (65536 if device == "cuda" else 8192), device)


if __name__ == "__main__":
    main()

"""FLOP counts and the measured matmul rate, for tokens/s -> fraction of the FLOP limit and MFU."""

from __future__ import annotations

import time

import torch


def forward_flops_per_token(config, mean_context: float) -> float:
    """Every matmul of one token's forward pass: attention projections, attention scores and
    values over `mean_context` earlier positions, the MLP, and the vocabulary projection."""
    d, layers, ffn, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = head_dim * (getattr(config, "num_key_value_heads", None) or heads)
    q = head_dim * heads
    per_layer = 2 * (d * q + 2 * d * kv + q * d) + 2 * 3 * d * ffn + 2 * 2 * q * mean_context
    return layers * per_layer + 2 * d * vocab


def matmul_rate(dtype: torch.dtype, device: str) -> float:
    """FLOP/s of a large square matmul in `dtype` on `device`, measured now."""
    n = 4096 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    reps = 50 if device.startswith("cuda") else 5
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()

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


# Dense bf16 tensor-core peaks from the vendors' datasheets, in FLOP/s, by device name (the first
# match wins, so the more specific names come first).
DATASHEET_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


def datasheet_peak(device: str) -> float | None:
    """The card's datasheet dense bf16 peak, which published MFU figures are against; None on the
    CPU or for a card not listed here."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in DATASHEET_BF16 if key in name), None)

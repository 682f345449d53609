"""How stored teacher log-probs are made small: token ids packed at the vocabulary's bit width, and
log-probs quantized to 8 bits with a scale per position.

Ids: a vocabulary of V tokens needs ceil(log2 V) bits (16 for SmolLM2's 49,152; 18 for Qwen's
151,936, which an int32 column would store in 32). A row's ids are packed into one bit string,
most significant bit first.

Log-probs (uint8): each position's values v (its kept tokens and, where stored, the log of the mass
left to the others) become q = round((hi - v) / step), hi the position's largest value and
step = (hi - lo) / 255 over its finite values, both kept in float16. The error is at most step / 2 in
log space, a relative error in each probability of the same size (about 2% for a position whose
values span 20 nats, 0.2% for one that spans 2); `dequantize` then renormalizes each position so
that its outcomes sum to 1 (a shared rounding of hi shifts them all alike).
"""

from __future__ import annotations

import math

import numpy as np

LEVELS = 255


def id_bits(vocab: int) -> int:
    return max(1, math.ceil(math.log2(vocab)))


def pack_ids(ids: np.ndarray, bits: int) -> bytes:
    """The ids (any shape, each below 2**bits) as one bit string, `bits` each, most significant first."""
    flat = np.ascontiguousarray(ids, dtype=np.uint32).ravel()
    if bits == 16:
        return flat.astype(">u2").tobytes()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    return np.packbits(((flat[:, None] >> shifts) & 1).astype(np.uint8)).tobytes()


def unpack_ids(data: np.ndarray | bytes, n: int, bits: int) -> np.ndarray:
    """The first `n` ids of a bit string written by `pack_ids`, as int64."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if bits == 16:
        return raw[: 2 * n].view(">u2").astype(np.int64)
    # each id's bits right-aligned in 32, packed again as big-endian uint32: no arithmetic per bit
    padded = np.zeros((n, 32), dtype=np.uint8)
    padded[:, 32 - bits :] = np.unpackbits(raw, count=n * bits).reshape(n, bits)
    return np.packbits(padded, axis=1).view(">u4").ravel().astype(np.int64)


def quantize(values: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """values [positions, m] (log-probs; -inf allowed; `valid` marks the slots in use) as uint8
    codes [positions, m] and float16 scales [positions, 2] (hi, step)."""
    values = np.asarray(values, dtype=np.float32)
    usable = np.isfinite(values) if valid is None else valid & np.isfinite(values)
    hi = np.where(usable, values, -np.inf).max(axis=1)
    lo = np.where(usable, values, np.inf).min(axis=1)
    hi = np.where(np.isfinite(hi), hi, 0.0).astype(np.float16)
    lo = np.where(np.isfinite(lo), lo, hi)
    step = np.maximum((hi.astype(np.float32) - lo) / LEVELS, 1e-6).astype(np.float16)
    step32 = step.astype(np.float32)[:, None]
    codes = np.rint((hi.astype(np.float32)[:, None] - np.where(usable, values, lo[:, None])) / step32)
    return np.clip(codes, 0, LEVELS).astype(np.uint8), np.stack([hi, step], axis=1)


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Log-probs [positions, m] (float32) from `quantize`'s codes and scales, before renormalizing."""
    hi, step = scales[:, :1].astype(np.float32), scales[:, 1:].astype(np.float32)
    return hi - codes.astype(np.float32) * step

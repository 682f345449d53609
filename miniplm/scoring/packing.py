"""Padding-free batches: windows packed back to back into one stream, each attending only to itself.

A padded batch of web-like documents (lengths from a few tokens to 2,048)
spends much of its compute on padding even when sorted by length. Packed,
a batch is one row of at most `batch_tokens` tokens holding many windows;
positions restart at 0 for each window, and attention is kept inside each
window by the kernel the model was loaded with:

- flash-attn (`flash_attention_2`): variable-length attention over the
  windows' cumulative lengths;
- torch's flex_attention: a block mask, so blocks across windows are skipped;
- any other (sdpa, eager): a dense block-diagonal causal mask, [stream, stream];
  exact and simple, the reference the tests hold the others to, and too big
  for long streams: the CPU path.

Restarted positions alone do not keep the windows apart in every kernel, so
the separation is always given explicitly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from miniplm.scoring.windows import Window


def plan_packed(windows: Sequence[Window], batch_tokens: int) -> list[list[Window]]:
    """Windows into streams of at most `batch_tokens` tokens: first-fit, longest first.

    Like the padded plan, a pure function of the windows (a resumed shard sees the same
    batches). Each stream lists its windows in the order they were placed.
    """
    order = sorted(windows, key=lambda w: (-w.length, w.doc, w.start))
    streams: list[list[Window]] = []
    room: list[int] = []
    for w in order:
        # Longest first, so a stream that cannot take this window takes no later one that is longer;
        # most windows land in one of the last few streams opened.
        for i in range(len(streams)):
            if room[i] >= w.length:
                streams[i].append(w)
                room[i] -= w.length
                break
        else:
            streams.append([w])
            room.append(batch_tokens - w.length)
    return streams


PAD_SEGMENT = 128  # flex_attention's block: padding in pieces this long costs next to no attention


def segments(lengths: Sequence[int], total: int) -> list[int]:
    """The stream's segments: each window, then the padding up to `total`, in pieces of its own."""
    pad = max(total - sum(lengths), 0)
    return [*lengths, *[PAD_SEGMENT] * (pad // PAD_SEGMENT), *([pad % PAD_SEGMENT] if pad % PAD_SEGMENT else [])]


def position_ids(parts: Sequence[int]) -> np.ndarray:
    """Positions restarting at 0 in each segment."""
    starts = np.repeat(np.cumsum([0, *parts[:-1]]), parts)
    return np.arange(sum(parts)) - starts


def to_device(array: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """A numpy array on `device`; to a GPU through pinned memory, without waiting for queued kernels
    (a copy from pageable memory waits for them)."""
    tensor = torch.from_numpy(array)
    return (
        tensor.pin_memory().to(device, non_blocking=True) if torch.device(device).type == "cuda" else tensor.to(device)
    )


def attention_inputs(parts: Sequence[int], attn: str, device: str | torch.device, dtype: torch.dtype) -> dict:
    """The model keyword arguments that keep each segment of a packed stream to itself under the
    attention kernel `attn` (the model's config._attn_implementation)."""
    total = sum(parts)
    if attn.startswith("flash_attention"):
        cu = to_device(np.cumsum([0, *parts]).astype(np.int32), device)
        longest = max(parts)
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
    doc = to_device(np.repeat(np.arange(len(parts)), parts), device)
    if attn == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def same_window_causal(b, h, q, k):
            return (doc[q] == doc[k]) & (q >= k)

        on_cuda = torch.device(device).type == "cuda"
        return {
            "attention_mask": create_block_mask(
                same_window_causal, None, None, total, total, device=device, _compile=on_cuda
            )
        }
    allowed = (doc[:, None] == doc[None, :]) & torch.ones(total, total, dtype=torch.bool, device=device).tril()
    # additive, not boolean: eager attention reads a boolean mask wrongly
    mask = torch.zeros(total, total, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return {"attention_mask": mask[None, None]}

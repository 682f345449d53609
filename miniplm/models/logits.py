"""A causal LM's output layer as plain tensors, and its float32 logits for hidden states.

Distillation needs the vocabulary projection of both models a chunk of
positions at a time, and the student's gradients with respect to the
projection's weight computed there (so that no [positions, vocab] tensor is
kept, and so that ZeRO-3 need not gather the weight again in the backward
pass): it works on the weight itself, not on the module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOGITS_BYTES = 256 << 20  # float32 logits per chunk


@dataclass(frozen=True)
class Head:
    """A causal LM's output layer, and what its architecture does to the logits after it."""

    weight: torch.Tensor  # [vocab, hidden]
    bias: torch.Tensor | None = None
    scale: float = 1.0  # Cohere's logit_scale, 1 / Granite's logits_scaling
    softcap: float | None = None  # Gemma 2: cap * tanh(logits / cap)


def head_of(model: torch.nn.Module) -> Head:
    out = model.get_output_embeddings()
    config = model.config
    scale = 1.0
    if getattr(config, "logit_scale", None):
        scale *= config.logit_scale
    if getattr(config, "logits_scaling", None):
        scale /= config.logits_scaling
    return Head(out.weight, getattr(out, "bias", None), scale, getattr(config, "final_logit_softcapping", None) or None)


def head_logits(hidden: torch.Tensor, head: Head) -> torch.Tensor:
    """Logits for hidden states [positions, d], as float32 (float64 for a float64 model)."""
    logits = torch.nn.functional.linear(hidden, head.weight, head.bias)
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if head.scale != 1.0:
        logits = logits * head.scale
    if head.softcap:
        logits = torch.tanh(logits / head.softcap) * head.softcap
    return logits


def chunk_rows(vocab: int, budget: int = LOGITS_BYTES) -> int:
    """Positions per chunk so that one [chunk, vocab] float32 tensor stays within `budget` bytes."""
    return max(1, budget // (vocab * 4))

"""Log-probabilities of the actual next tokens, without the [batch, seq, vocab] tensor; and the
glue from windows of token sequences to per-window log-probabilities, which the score stage
and held-out evaluation share.

The base model runs once; only the hidden states at scored positions go
through the vocabulary projection, a chunk of positions at a time, and each
chunk is reduced to (target logit - logsumexp) at once. With a 150k-token
vocabulary the full float32 logits of one 16k-token batch would take 10 GB;
a chunk here takes at most LOGITS_BYTES.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from miniplm.scoring.windows import Window

LOGITS_BYTES = 256 << 20


def _project(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    head = model.get_output_embeddings()
    logits = torch.nn.functional.linear(hidden, head.weight, getattr(head, "bias", None))
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    # What some architectures do to logits after the projection (Cohere, Granite, Gemma 2).
    config = model.config
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.inference_mode()
def target_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    targets: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """log p(targets[b, t] | input_ids[b, :t+1]) for every (b, t) where `scored` is true,
    in row-major order; float32 (float64 for a float64 model)."""
    # use_cache=False: a key/value cache would only cost memory (several GB per batch for 7B models)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    h = hidden[scored]
    y = targets[scored]
    vocab = model.get_output_embeddings().weight.shape[0]
    out_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    out = torch.empty(h.shape[0], dtype=out_dtype, device=h.device)
    chunk = max(1, LOGITS_BYTES // (vocab * 4))
    for s in range(0, h.shape[0], chunk):
        logits = _project(model, h[s : s + chunk])
        out[s : s + chunk] = logits.gather(1, y[s : s + chunk, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return out


def collate(batch: Sequence[Window], sequences: Sequence[np.ndarray], prefix: int, device: str):
    """The padded model inputs of a batch of windows: input ids, attention mask, targets, and which
    positions are scored. Each sequence is read as [prefix] + its tokens."""
    width = batch[0].length
    input_ids = np.zeros((len(batch), width), dtype=np.int64)
    targets = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=bool)
    scored = np.zeros((len(batch), width), dtype=bool)
    for row, w in enumerate(batch):
        seq = np.concatenate([[prefix], sequences[w.doc]])
        input_ids[row, : w.length] = seq[w.start : w.end]
        targets[row, : w.length] = seq[w.start + 1 : w.end + 1]
        mask[row, : w.length] = True
        scored[row, w.skip : w.length] = True
    as_tensor = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return as_tensor(input_ids), as_tensor(mask.astype(np.int64)), as_tensor(targets), as_tensor(scored)


def batch_logprobs(batch: Sequence[Window], sequences: Sequence[np.ndarray], models: dict[str, torch.nn.Module],
                   prefix: int, device: str) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per model, the scored tokens' log-probabilities of each window of the batch (on the CPU)."""
    tensors = collate(batch, sequences, prefix, device)
    sizes = [w.scored for w in batch]
    return {name: torch.split(target_logprobs(m, *tensors).cpu(), sizes) for name, m in models.items()}

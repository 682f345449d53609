"""From windows of token sequences to the log-probabilities of their scored tokens, under one or
more models: the part the score stage, held-out evaluation and the benchmark share.

Each batch runs the model's body once. Only the hidden states at scored
positions reach the vocabulary projection (models/linear_ce.py: chunked
torch, or a fused kernel on CUDA), so no [batch, seq, vocab] tensor is built.
Batches are padded (length-sorted rows) or packed (one stream of windows,
scoring/packing.py). On CUDA nothing in the loop waits for the GPU: inputs
go up from pinned memory, results come back into pinned memory, and a
batch's results are handed out while the next batch runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from miniplm.models.kernels import compile_layers, linear_ce_kernel
from miniplm.models.linear_ce import head_of, token_logprobs
from miniplm.schema.base import KernelChoice
from miniplm.scoring.packing import attention_inputs, plan_packed, position_ids, segments, to_device
from miniplm.scoring.windows import Window, plan_batches

Results = dict[str, tuple[torch.Tensor, ...]]  # per model, each window's scored log-probs (CPU)


@dataclass
class Inputs:
    """One batch, ready for the models."""

    kwargs: dict  # input_ids and what keeps each window to itself
    rows: torch.Tensor  # the scored positions, as indices into the flattened [batch * seq] hidden states
    targets: torch.Tensor  # the token each scored position predicts
    sizes: list[int]  # scored positions per window, in batch order


def _window_tokens(w: Window, sequences: Sequence[np.ndarray], prefix: int) -> tuple[np.ndarray, np.ndarray]:
    """A window's inputs and targets: the sequence read as [prefix] + its tokens."""
    seq = np.concatenate([[prefix], sequences[w.doc]])
    return seq[w.start : w.end], seq[w.start + 1 : w.end + 1]


def collate_padded(
    batch: Sequence[Window], sequences: Sequence[np.ndarray], prefix: int, device: torch.device
) -> Inputs:
    width = max(w.length for w in batch)
    input_ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    rows, targets = [], []
    for r, w in enumerate(batch):
        tokens, following = _window_tokens(w, sequences, prefix)
        input_ids[r, : w.length] = tokens
        mask[r, : w.length] = 1
        rows.append(np.arange(r * width + w.skip, r * width + w.length))
        targets.append(following[w.skip :])
    return Inputs(
        {"input_ids": to_device(input_ids, device), "attention_mask": to_device(mask, device)},
        to_device(np.concatenate(rows), device),
        to_device(np.concatenate(targets), device),
        [w.scored for w in batch],
    )


def collate_packed(
    batch: Sequence[Window],
    sequences: Sequence[np.ndarray],
    prefix: int,
    device: torch.device,
    attn: str,
    dtype: torch.dtype,
    pad_to: int | None = None,
) -> Inputs:
    lengths = [w.length for w in batch]
    parts = segments(lengths, max(pad_to or 0, sum(lengths)))
    input_ids = np.zeros(sum(parts), dtype=np.int64)
    rows, targets = [], []
    offset = 0
    for w in batch:
        tokens, following = _window_tokens(w, sequences, prefix)
        input_ids[offset : offset + w.length] = tokens
        rows.append(np.arange(offset + w.skip, offset + w.length))
        targets.append(following[w.skip :])
        offset += w.length
    kwargs = {
        "input_ids": to_device(input_ids[None], device),
        "position_ids": to_device(position_ids(parts)[None], device),
        **attention_inputs(parts, attn, device, dtype),
    }
    return Inputs(
        kwargs,
        to_device(np.concatenate(rows), device),
        to_device(np.concatenate(targets), device),
        [w.scored for w in batch],
    )


class Scorer:
    """Runs batches of windows through `models` and hands back each window's scored log-probs."""

    def __init__(
        self,
        models: dict[str, torch.nn.Module],
        prefix: int,
        device: str | torch.device,
        *,
        packed: bool = False,
        batch_tokens: int = 16384,
        kernels: KernelChoice = "auto",
        compile: bool = False,
    ):
        self.models, self.prefix, self.device = models, prefix, torch.device(device)
        self.packed, self.batch_tokens = packed, batch_tokens
        self.kernel = linear_ce_kernel(self.device, kernels)
        # one stream length on CUDA, so compiled kernels (flex attention, torch.compile) compile once
        self.pad_to = batch_tokens if packed and self.device.type == "cuda" else None
        if compile:
            for model in models.values():
                compile_layers(model)
        self.compiled = compile
        first = next(iter(models.values()))
        self.attn, self.dtype = first.config._attn_implementation, first.dtype

    def plan(self, windows: Sequence[Window]) -> list[list[Window]]:
        """The batches, a pure function of the windows."""
        return plan_packed(windows, self.batch_tokens) if self.packed else plan_batches(windows, self.batch_tokens)

    def describe(self) -> str:
        """What, besides the inputs and the models, decides the floating-point results."""
        return f"{'packed' if self.packed else 'padded'} batches, projection {self.kernel}" + (
            ", compiled" if self.compiled else ""
        )

    def inputs(self, batch: Sequence[Window], sequences: Sequence[np.ndarray]) -> Inputs:
        if self.packed:
            return collate_packed(batch, sequences, self.prefix, self.device, self.attn, self.dtype, self.pad_to)
        return collate_padded(batch, sequences, self.prefix, self.device)

    @torch.inference_mode()
    def _logprobs(self, name: str, inputs: Inputs) -> torch.Tensor:
        # use_cache=False: a key/value cache would only cost memory (several GB per batch for 7B models)
        hidden = self.models[name].base_model(**inputs.kwargs, use_cache=False).last_hidden_state
        scored = hidden.reshape(-1, hidden.shape[-1]).index_select(0, inputs.rows)
        return token_logprobs(scored, inputs.targets, head_of(self.models[name]), self.kernel)

    def run(self, batches: Sequence[Sequence[Window]], sequences: Sequence[np.ndarray]) -> Iterator[Results]:
        """Each batch's results, in order. On CUDA, batch b's come back while batch b + 1 runs."""
        pending = None
        for batch in batches:
            inputs = self.inputs(batch, sequences)
            on_device = {name: self._logprobs(name, inputs) for name in self.models}
            result = _Copy(on_device, inputs.sizes)
            if pending is not None:
                yield pending.result()
            pending = result
        if pending is not None:
            yield pending.result()


class _Copy:
    """Log-probs on their way to the CPU: into pinned memory without waiting, on CUDA."""

    def __init__(self, on_device: dict[str, torch.Tensor], sizes: list[int]):
        self.sizes = sizes
        self.event = None
        if all(t.device.type != "cuda" for t in on_device.values()):
            self.host = on_device
            return
        self.host = {}
        for name, t in on_device.items():
            self.host[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self.host[name].copy_(t, non_blocking=True)
        self.source = on_device  # alive until the copy is done
        self.event = torch.cuda.Event()
        self.event.record()

    def result(self) -> Results:
        if self.event is not None:
            self.event.synchronize()
        return {name: torch.split(t, self.sizes) for name, t in self.host.items()}


@torch.inference_mode()
def target_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    scored: torch.Tensor,
    kernels: KernelChoice = "auto",
) -> torch.Tensor:
    """log p(targets[b, t] | input_ids[b, :t+1]) for every (b, t) where `scored` is true, in row-major
    order; float32 (float64 for a float64 model)."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return token_logprobs(hidden[scored], targets[scored], head_of(model), linear_ce_kernel(hidden.device, kernels))


def batch_logprobs(
    batch: Sequence[Window],
    sequences: Sequence[np.ndarray],
    models: dict[str, torch.nn.Module],
    prefix: int,
    device: str,
) -> Results:
    """Per model, the scored tokens' log-probabilities of each window of one padded batch."""
    return next(Scorer(models, prefix, device).run([batch], sequences))

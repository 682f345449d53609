"""How much each part of a Llama- or Qwen2-shaped model matters, measured on calibration text (Minitron).

Width: one forward pass with hooks collects activations, each aggregated as
the mean of |x| over the sequence, then the L2 norm over the batch (as
NVIDIA's Model Optimizer does for Minitron):
- attention heads: the input of o_proj (the heads' outputs), per channel,
  then the L2 norm over each head's channels; a key-value group's importance
  is the norm over all the channels of its query heads;
- MLP neurons: the input of down_proj (the gated activation), per neuron;
- embedding channels: the output of each RMSNorm (both of every layer's, and
  the final one), per channel, summed over the norms (Minitron: per layer,
  then the sum over layers).
Depth: the rise in calibration loss when a layer alone is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class WidthImportance:
    heads: list[torch.Tensor]  # per layer: [num_attention_heads]
    groups: list[torch.Tensor]  # per layer: [num_key_value_heads]
    neurons: list[torch.Tensor]  # per layer: [intermediate_size]
    channels: torch.Tensor  # [hidden_size]


class _Activations:
    """sum over batches of (mean over the sequence of |x|)^2, per channel of the last dimension."""

    def __init__(self):
        self.squares: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        a = x.detach().float().abs().mean(dim=1).pow(2).sum(dim=0)
        self.squares = a if self.squares is None else self.squares + a

    def norm(self) -> torch.Tensor:
        assert self.squares is not None, "no calibration batch reached this module"
        return self.squares.sqrt().cpu()


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def width_importance(model, batches: list[torch.Tensor]) -> tuple[WidthImportance, float]:
    """Importance of every head, key-value group, MLP neuron and embedding channel on `batches` of token rows,
    and the model's loss on them."""
    layers = model.model.layers
    heads = [_Activations() for _ in layers]
    neurons = [_Activations() for _ in layers]
    # one per norm: Minitron sums each layer's importance; one norm over all of them would rank a channel
    # strong in a single layer above one steady across many
    norms = [n for layer in layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    norms.append(model.model.norm)
    channels = [_Activations() for _ in norms]
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: heads[i].add(a[0])))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: neurons[i].add(a[0])))
    for j, norm in enumerate(norms):
        handles.append(norm.register_forward_hook(lambda m, a, out, j=j: channels[j].add(out)))
    try:
        loss = lm_loss(model, batches)
    finally:
        for h in handles:
            h.remove()
    config = model.config
    n_heads, n_groups, dim = config.num_attention_heads, config.num_key_value_heads, head_dim(config)
    per_channel = [h.norm().view(n_heads, dim) for h in heads]
    return WidthImportance(
        heads=[c.norm(dim=1) for c in per_channel],
        # query head h reads key-value head h // (n_heads / n_groups) (transformers' repeat_kv)
        groups=[c.view(n_groups, n_heads // n_groups, dim).norm(dim=(1, 2)) for c in per_channel],
        neurons=[n.norm() for n in neurons],
        channels=torch.stack([c.norm() for c in channels]).sum(dim=0),
    ), loss


class _Skipped(torch.nn.Module):
    """A decoder layer left out: its input passes through unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@torch.no_grad()
def lm_loss(model, batches: list[torch.Tensor]) -> float:
    """Mean next-token loss over every predicted position of `batches`, through the output layer a
    chunk of positions at a time (full logits of a calibration batch would be gigabytes, and layer
    importance computes this once per layer)."""
    from miniplm.models.kernels import linear_ce_kernel
    from miniplm.models.linear_ce import head_of, token_logprobs

    head, kernel = head_of(model), linear_ce_kernel(batches[0].device)
    total, count = 0.0, 0
    for batch in batches:
        hidden = model.model(input_ids=batch).last_hidden_state[:, :-1]
        targets = batch[:, 1:].reshape(-1)
        total -= float(token_logprobs(hidden.reshape(len(targets), -1), targets, head, kernel).double().sum())
        count += len(targets)
    return total / count


@torch.no_grad()
def layer_importance(model, batches: list[torch.Tensor], show_progress: bool = False) -> tuple[float, list[float]]:
    """The model's calibration loss, and per layer the loss with that layer alone skipped."""
    from tqdm import tqdm

    layers = model.model.layers
    full = lm_loss(model, batches)
    dropped = []
    for i in tqdm(
        range(len(layers)),
        desc="prune: loss with each layer skipped",
        unit="layer",
        disable=not show_progress,
        leave=False,
        dynamic_ncols=True,
    ):
        kept = layers[i]
        layers[i] = _Skipped()
        try:
            dropped.append(lm_loss(model, batches))
        finally:
            layers[i] = kept
    return full, dropped

"""A smaller model cut out of a Llama- or Qwen2-shaped one (Minitron): keep the most important attention
heads, MLP neurons and embedding channels, in that order, then drop the layers whose absence changes the
calibration loss least.

Heads are pruned within the grouped-query structure: the most important
key-value groups are kept, and in each the most important query heads, so
that every kept query head still reads its own key-value head; a head keeps
the teacher's head_dim. Every kept weight is copied unchanged, in its
original order; nothing is re-initialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from miniplm.errors import ConfigError
from miniplm.models.importance import WidthImportance, head_dim

SUPPORTED = ("llama", "qwen2")
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")


def shape_of(config) -> dict[str, int]:
    return {
        k: int(getattr(config, k) or (config.num_attention_heads if k == "num_key_value_heads" else 0))
        for k in SHAPE_KEYS
    }


def check_prunable(config, where: str) -> None:
    if config.model_type not in SUPPORTED:
        raise ConfigError(
            f"{where}: pruning supports {' and '.join(SUPPORTED)}-shaped models; this one is {config.model_type!r}"
        )


def target_shape(config, wanted: dict[str, int | None], where: str) -> dict[str, int]:
    """The pruned shape: `wanted` where given, the teacher's elsewhere; a ConfigError when it cannot be cut out."""
    source = shape_of(config)
    shape = {k: (wanted.get(k) or source[k]) for k in SHAPE_KEYS}
    for k in SHAPE_KEYS:
        if shape[k] > source[k]:
            raise ConfigError(f"{where}: target {k} {shape[k]} is larger than the model's ({source[k]})")
    if shape["num_attention_heads"] % shape["num_key_value_heads"]:
        raise ConfigError(
            f"{where}: target num_attention_heads {shape['num_attention_heads']} must be a multiple of "
            f"num_key_value_heads {shape['num_key_value_heads']}"
        )
    per_group = source["num_attention_heads"] // source["num_key_value_heads"]
    if shape["num_attention_heads"] // shape["num_key_value_heads"] > per_group:
        raise ConfigError(
            f"{where}: target {shape['num_attention_heads']} heads in {shape['num_key_value_heads']} "
            f"key-value groups needs more than the model's {per_group} query heads per group; "
            "keep more key-value groups"
        )
    return shape


def kv_heads_for(config, heads: int) -> int:
    """Key-value groups for a target of `heads` query heads when none is asked for: as many as the model has,
    at most, that divide `heads` and leave no group with more query heads than the model's groups have."""
    source = shape_of(config)
    per_group = source["num_attention_heads"] // source["num_key_value_heads"]
    fits = [
        k for k in range(1, min(heads, source["num_key_value_heads"]) + 1) if heads % k == 0 and heads // k <= per_group
    ]
    if not fits:
        raise ConfigError(
            f"{heads} heads cannot be cut out of {source['num_attention_heads']} heads in "
            f"{source['num_key_value_heads']} key-value groups"
        )
    return max(fits)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores (ties to the lower index), in ascending order."""
    return torch.sort(torch.argsort(scores, descending=True, stable=True)[:k]).values


@dataclass
class WidthPlan:
    """What width pruning keeps, per layer and overall."""

    groups: list[torch.Tensor]  # kept key-value heads, per layer
    heads: list[torch.Tensor]  # kept query heads, per layer
    neurons: list[torch.Tensor]  # kept MLP neurons, per layer
    channels: torch.Tensor  # kept embedding channels
    layers: list[int] = field(default_factory=list)  # kept layers (depth, decided later)


def plan_width(config, importance: WidthImportance, shape: dict[str, int]) -> WidthPlan:
    per_group = config.num_attention_heads // config.num_key_value_heads
    keep_per_group = shape["num_attention_heads"] // shape["num_key_value_heads"]
    groups, heads = [], []
    for g_scores, h_scores in zip(importance.groups, importance.heads):
        kept_groups = _top(g_scores, shape["num_key_value_heads"])
        groups.append(kept_groups)
        heads.append(
            torch.cat(
                [
                    g * per_group + _top(h_scores[g * per_group : (g + 1) * per_group], keep_per_group)
                    for g in kept_groups.tolist()
                ]
            )
        )
    neurons = [_top(n, shape["intermediate_size"]) for n in importance.neurons]
    return WidthPlan(
        groups, heads, neurons, _top(importance.channels, shape["hidden_size"]), list(range(config.num_hidden_layers))
    )


def _rows(heads: torch.Tensor, dim: int) -> torch.Tensor:
    """The rows (or columns) of a projection that belong to `heads`."""
    return (heads[:, None] * dim + torch.arange(dim)).reshape(-1)


def sliced_state_dict(model, plan: WidthPlan) -> dict[str, torch.Tensor]:
    """The model's weights cut to the plan: kept heads, neurons and channels of the kept layers, renumbered."""
    dim = head_dim(model.config)
    ch = plan.channels
    out: dict[str, torch.Tensor] = {}
    new_index = {old: new for new, old in enumerate(plan.layers)}
    for name, w in model.state_dict().items():
        parts = name.split(".")
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            out[name] = w[:, ch]
            continue
        if name == "model.norm.weight":
            out[name] = w[ch]
            continue
        if parts[:2] != ["model", "layers"]:
            raise ConfigError(f"cannot prune a model with parameter {name!r}")
        layer = int(parts[2])
        if layer not in new_index:
            continue
        rest = ".".join(parts[3:])
        q = _rows(plan.heads[layer], dim)
        kv = _rows(plan.groups[layer], dim)
        n = plan.neurons[layer]
        # output rows and input columns each parameter keeps; None: all of that axis
        cut = {
            "self_attn.q_proj": (q, ch),
            "self_attn.k_proj": (kv, ch),
            "self_attn.v_proj": (kv, ch),
            "self_attn.o_proj": (ch, q),
            "mlp.gate_proj": (n, ch),
            "mlp.up_proj": (n, ch),
            "mlp.down_proj": (ch, n),
            "input_layernorm": (ch, None),
            "post_attention_layernorm": (ch, None),
        }
        module, _, kind = rest.rpartition(".")
        if module not in cut:
            raise ConfigError(f"cannot prune a model with parameter {name!r}")
        rows, cols = cut[module]
        w = w[rows]
        if kind == "weight" and w.dim() == 2:
            w = w[:, cols]
        out[".".join(["model", "layers", str(new_index[layer]), rest])] = w.contiguous()
    return out


def per_layer_lists(config) -> dict[str, list]:
    """The config's fields that hold one entry per layer (layer_types, per-layer windows, ...): every list as
    long as the model is deep, but for those that never describe layers (token ids, architectures)."""
    n = config.num_hidden_layers
    return {
        k: list(v)
        for k, v in config.to_dict().items()
        if isinstance(v, (list, tuple))
        and len(v) == n
        and k != "architectures"
        and not k.endswith(("token_id", "token_ids"))
    }


def pruned_config(config, shape: dict[str, int], layers: list[int]):
    """The teacher's config with the pruned shape: head_dim kept, and every per-layer list holding the
    entries of `layers`, the kept layers in order (a model reads its layer i's kind, window, ... from them)."""
    if len(layers) != shape["num_hidden_layers"]:
        raise ValueError(f"{len(layers)} kept layers for a shape of {shape['num_hidden_layers']} layers")
    new = config.__class__.from_dict(config.to_dict())
    new.head_dim = head_dim(config)
    for k, v in shape.items():
        setattr(new, k, v)
    for k, v in per_layer_lists(config).items():
        setattr(new, k, [v[i] for i in layers])
    return new


def build(model, plan: WidthPlan, shape: dict[str, int]):
    """A new model of the pruned shape holding the kept weights."""
    from transformers import AutoModelForCausalLM

    config = pruned_config(model.config, shape | {"num_hidden_layers": len(plan.layers)}, plan.layers)
    pruned = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    pruned.load_state_dict(sliced_state_dict(model, plan), strict=True)
    return pruned.eval()


def drop_layers(dropped_losses: list[float], keep: int) -> list[int]:
    """The `keep` layers to keep: drop those whose absence raised the loss least (ties: the later layer)."""
    order = sorted(range(len(dropped_losses)), key=lambda i: (dropped_losses[i], -i))
    return sorted(order[len(dropped_losses) - keep :])

"""FLOP counts of causal LMs, and the measured matmul rate (tokens/s -> fraction of the FLOP limit, MFU).

The count is every matmul of a forward pass, read off the model itself: each
linear layer costs 2 x (its weight's size) per token, the vocabulary
projection included (whether or not it is tied to the embedding), and
attention costs 2 x (query width) per (query, key) pair for the scores and as
much again for the weighted values. Reading the modules rather than config
names makes it right for any Hugging Face causal LM: gated or plain MLPs,
grouped-query attention, biases (not counted: additions), GPT-2's Conv1D. A
mixture of experts counts every expert, an upper bound of what a token uses.
Embedding lookups, norms and softmax are not matmuls and are not counted.
Training is counted as three forwards (forward and backward), as MFU is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelFlops:
    body: float  # per input position: every linear layer but the vocabulary projection
    head: float  # per position projected onto the vocabulary
    attention: float  # per (query, key) pair, all layers

    def forward(self, n_inputs: int | float, n_projected: int | float | None = None) -> float:
        """One causal sequence of `n_inputs` positions (position t attends to t + 1 keys), of which
        `n_projected` (default: all) go through the vocabulary projection."""
        n_projected = n_inputs if n_projected is None else n_projected
        return n_inputs * self.body + n_projected * self.head + self.attention * n_inputs * (n_inputs + 1) / 2

    def per_token(self, mean_context: float) -> float:
        """One token that attends to `mean_context` keys, projected."""
        return self.body + self.head + self.attention * mean_context

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ModelFlops":
        """Counted from a model's modules."""
        from transformers.pytorch_utils import Conv1D

        head = model.get_output_embeddings()
        linear = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
        config = model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            body=float(linear - 2 * head.weight.numel()),
            head=float(2 * head.weight.numel()),
            attention=float(config.num_hidden_layers * 4 * heads * head_dim),
        )

    @classmethod
    def of_config(cls, config) -> "ModelFlops":
        """Counted from a model built from `config` on the meta device (no memory, no weights)."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls.of(model)


def model_flops(name: str) -> ModelFlops:
    """The count for a model by name (a folder, a hub id, or smollm2-135m), from its config alone."""
    from transformers import AutoConfig

    from miniplm.models.loading import resolve_model

    return ModelFlops.of_config(AutoConfig.from_pretrained(resolve_model(name)))


def forward_flops_per_token(config, mean_context: float) -> float:
    """Every matmul of one token's forward pass, attending to `mean_context` earlier positions."""
    return ModelFlops.of_config(config).per_token(mean_context)


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

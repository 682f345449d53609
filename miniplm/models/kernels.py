"""Which kernels this process uses: attention, the fused vocabulary projection, fused layers.

flash-attn, cut-cross-entropy and liger-kernel are optional (`pip install
'miniplm[gpu]'`): CUDA/Triton kernels, used only when installed and the
model runs on CUDA in half precision. Everywhere else, and whenever a job
asks for `kernels: torch`, the plain torch paths run; they are the reference
the tests compare everything with.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from typing import Literal

import torch

from miniplm.schema.base import KernelChoice

LinearCE = Literal["torch", "cce", "liger"]

# Architectures liger-kernel can patch in place (RMSNorm, SwiGLU, RoPE), by Hugging Face model_type.
LIGER_PATCHES = {"qwen2": "apply_liger_kernel_to_qwen2", "llama": "apply_liger_kernel_to_llama"}


@lru_cache(maxsize=None)
def installed(module: str) -> bool:
    """Whether `module` can be imported (Triton-based ones also need triton, absent from CPU builds)."""
    if importlib.util.find_spec(module) is None:
        return False
    if module in ("cut_cross_entropy", "liger_kernel"):
        return importlib.util.find_spec("triton") is not None
    return True


def on_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def flex_attention_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def attention_implementation(
    dtype: torch.dtype, device: str | torch.device, packed: bool = False, choice: KernelChoice = "auto"
) -> str:
    """The attention kernel to load a model with: flash-attn on CUDA in half precision when
    installed (it takes packed batches as they are); for packed batches without it, torch's
    flex_attention on CUDA (a block mask per document); else torch's sdpa (packed batches then
    get a dense block-diagonal mask: the reference path, and what the CPU runs)."""
    half = dtype in (torch.float16, torch.bfloat16)
    if on_cuda(device) and half and choice == "auto" and installed("flash_attn"):
        return "flash_attention_2"
    if on_cuda(device) and packed and flex_attention_available():
        return "flex_attention"
    return "sdpa"


def linear_ce_kernel(
    device: str | torch.device, choice: KernelChoice = "auto", *, weight_in_backward: bool = True
) -> LinearCE:
    """The kernel that projects hidden states onto the vocabulary and takes the log-softmax of
    the targets in one pass, without the logits reaching memory: cut-cross-entropy, else
    liger-kernel, when installed and on CUDA; the chunked torch path otherwise.

    `weight_in_backward=False` says the output embedding is not there after the forward pass
    (ZeRO-3 frees gathered weights): cut-cross-entropy reads it again in its backward, liger
    computes the gradients in the forward."""
    if choice == "torch" or not on_cuda(device):
        return "torch"
    if weight_in_backward and installed("cut_cross_entropy"):
        return "cce"
    if installed("liger_kernel"):
        return "liger"
    return "torch"


def apply_liger_layers(model: torch.nn.Module, device: str | torch.device, choice: KernelChoice = "auto") -> bool:
    """Swap a Qwen2- or Llama-shaped model's RMSNorm and SwiGLU MLP for liger-kernel's fused
    Triton versions, in place (this instance only), when installed and on CUDA. Whether it did."""
    patch = LIGER_PATCHES.get(getattr(model.config, "model_type", ""))
    if choice == "torch" or not on_cuda(device) or patch is None or not installed("liger_kernel"):
        return False
    import liger_kernel.transformers as liger

    # liger also swaps the classes in transformers' modeling module, so that every model built
    # afterwards in this process (a CPU copy too, where Triton cannot run) would get them: put the
    # module back, keeping only this instance's layers. Its RoPE exists only as that module-wide
    # swap, so it stays off. The vocabulary projection and loss are miniplm's own (models/linear_ce.py).
    modeling = importlib.import_module(
        f"transformers.models.{model.config.model_type}.modeling_{model.config.model_type}"
    )
    saved = dict(vars(modeling))
    try:
        getattr(liger, patch)(
            rope=False, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model
        )
    finally:
        vars(modeling).update(saved)
    return True


def compile_layers(model: torch.nn.Module) -> None:
    """torch.compile each decoder layer in place (one graph, compiled once and reused by every
    layer; the state dict keeps its names), or the whole body when it has no `layers`."""
    body = model.base_model
    layers = getattr(body, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        for layer in layers:
            layer.compile()
    else:
        body.compile()


def use_packing(packing: str, device: str | torch.device) -> bool:
    """Whether score batches are packed: `packed`/`padded` as asked; `auto` packs on CUDA, where
    flash-attn or flex_attention keep the windows apart at no cost (the CPU's dense mask is not)."""
    if packing == "auto":
        return on_cuda(device) and (installed("flash_attn") or flex_attention_available())
    return packing == "packed"

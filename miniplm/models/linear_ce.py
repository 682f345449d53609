"""The vocabulary projection and the log-softmax of the actual next tokens, without a
[tokens, vocab] float32 tensor in memory.

With a 150k-token vocabulary the float32 logits of a 16k-token batch take
10 GB, and writing and reading them costs more than the matmul that makes
them. Two uses: `token_logprobs` (scoring and held-out loss: log p(target)
per row, no gradients) and `mean_nll` (the training loss, with gradients).
Each runs one of three kernels (models/kernels.py picks):

- torch: a chunk of rows at a time; logits in float32 (bf16 inputs with a
  float32 product on CUDA), reduced at once to (target logit - logsumexp).
  For training, an autograd function that computes the gradients chunk by
  chunk during the forward pass. The reference, and what the CPU runs.
- cce: cut-cross-entropy's Triton kernel; the logits never leave on-chip memory.
- liger: liger-kernel's fused linear cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from miniplm.models.kernels import LinearCE

LOGITS_BYTES = 256 << 20  # float32 logits of one chunk of the torch path


@dataclass(frozen=True)
class Head:
    """A causal LM's output layer, and what its architecture does to the logits after it."""

    weight: torch.Tensor  # [vocab, hidden]
    bias: torch.Tensor | None
    scale: float = 1.0  # logits times this: Cohere's logit_scale, 1 / Granite's logits_scaling
    softcap: float | None = None  # Gemma 2: cap * tanh(logits / cap)

    def first(self, vocab: int) -> "Head":
        """The layer's first `vocab` outputs: a head padded past its tokenizer (Qwen's 151,936 rows for
        151,646 tokens) cut to the tokens that exist. A view: gradients reach the whole weight."""
        if self.weight.shape[0] == vocab:
            return self
        if self.weight.shape[0] < vocab:
            raise ValueError(f"an output layer of {self.weight.shape[0]} tokens cannot cover {vocab}")
        return Head(self.weight[:vocab], None if self.bias is None else self.bias[:vocab], self.scale, self.softcap)


def head_of(model: torch.nn.Module) -> Head:
    out = model.get_output_embeddings()
    config = model.config
    scale = 1.0
    if getattr(config, "logit_scale", None):
        scale *= config.logit_scale
    if getattr(config, "logits_scaling", None):
        scale /= config.logits_scaling
    return Head(out.weight, getattr(out, "bias", None), scale, getattr(config, "final_logit_softcapping", None) or None)


@lru_cache(maxsize=None)
def _float32_product_supported(device_type: str) -> bool:
    """Whether torch.mm can multiply bf16 matrices into a float32 result on this device (CUDA,
    torch >= 2.8): full-precision logits at the speed of bf16 tensor cores."""
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device_type)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


class _Float32Product(torch.autograd.Function):
    """torch.mm of half-precision matrices into a float32 result, differentiable (torch has no
    derivative for mm's out_dtype form): the gradients are those of `(a @ b).float()`."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.mm(a, b, out_dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad.to(a.dtype)
        return (grad @ b.t() if ctx.needs_input_grad[0] else None, a.t() @ grad if ctx.needs_input_grad[1] else None)


def float32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with a float32 (float64 for float64 inputs) result, differentiable."""
    if a.dtype in (torch.bfloat16, torch.float16):
        if _float32_product_supported(a.device.type):
            return _Float32Product.apply(a, b)
        return (a @ b).float()
    return a @ b


def head_logits(hidden: torch.Tensor, head: Head) -> torch.Tensor:
    """Logits for hidden states [positions, d], as float32 (float64 for a float64 model)."""
    logits = float32_product(hidden, head.weight.t())
    if head.bias is not None:
        logits = logits + head.bias.to(logits.dtype)
    if head.scale != 1.0:
        logits = logits * head.scale
    if head.softcap:
        logits = torch.tanh(logits / head.softcap) * head.softcap
    return logits


def chunk_rows(vocab: int, budget: int | None = None) -> int:
    """Positions per chunk so that one [chunk, vocab] float32 tensor stays within `budget` bytes
    (LOGITS_BYTES, read at each call)."""
    return max(1, (budget or LOGITS_BYTES) // (vocab * 4))


def _fused(kernel: LinearCE, head: Head) -> LinearCE:
    """cut-cross-entropy has no bias term; such heads take the torch path."""
    return "torch" if kernel == "cce" and head.bias is not None else kernel


def _scaled(hidden: torch.Tensor, head: Head) -> torch.Tensor:
    return hidden * head.scale if head.scale != 1.0 else hidden


def _fused_nll(
    kernel: LinearCE, hidden: torch.Tensor, targets: torch.Tensor, head: Head, reduction: str, ignore_index: int = -100
):
    if kernel == "cce":
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy(
            _scaled(hidden, head),
            head.weight,
            targets,
            softcap=head.softcap,
            reduction=reduction,
            ignore_index=ignore_index,
        )
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(
        _scaled(hidden, head),
        head.weight,
        targets,
        head.bias,
        ignore_index=ignore_index,
        reduction=reduction,
        softcap=head.softcap,
    )


def token_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: Head, kernel: LinearCE = "torch") -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for each row: float32 (float64 for a float64 model)."""
    kernel = _fused(kernel, head)
    if kernel != "torch":
        return -_fused_nll(kernel, hidden, targets, head, "none").float()
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    out = torch.empty(hidden.shape[0], dtype=out_dtype, device=hidden.device)
    chunk = chunk_rows(head.weight.shape[0])
    for s in range(0, hidden.shape[0], chunk):
        logits = head_logits(hidden[s : s + chunk], head)
        y = targets[s : s + chunk, None]
        out[s : s + chunk] = logits.gather(1, y).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return out


def mean_nll(
    hidden: torch.Tensor, targets: torch.Tensor, head: Head, kernel: LinearCE = "torch", ignore_index: int = -100
) -> torch.Tensor:
    """The mean negative log-likelihood of `targets` over the rows whose target is not
    `ignore_index` (0 when there are none), differentiable with respect to `hidden` and the head's
    weight (and bias)."""
    kernel = _fused(kernel, head)
    if kernel != "torch":
        return _fused_nll(kernel, hidden, targets, head, "mean", ignore_index).float()
    return _ChunkedNLL.apply(hidden, head.weight, head.bias, targets, head.scale, head.softcap, ignore_index)


class _ChunkedNLL(torch.autograd.Function):
    """Mean NLL through the vocabulary projection, a chunk of rows at a time. The gradients are
    computed in the forward pass, while each chunk's logits are at hand, so that neither pass
    holds more than one chunk of logits; the backward pass only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, softcap, ignore_index=-100):
        vocab = weight.shape[0]
        counted = targets != ignore_index
        n = counted.sum().clamp(min=1)  # a tensor: no wait for the host
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        grad_b = torch.zeros(vocab, dtype=acc, device=weight.device) if want_b and bias is not None else None
        head = Head(weight, bias, scale, softcap)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        chunk = chunk_rows(vocab)
        for s in range(0, hidden.shape[0], chunk):
            h, w = hidden[s : s + chunk], counted[s : s + chunk]
            y = torch.where(w, targets[s : s + chunk], 0)
            logits = head_logits(h, head)
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * w).sum()
            if not (want_h or want_w or want_b):
                continue
            g = torch.exp(logits - lse[:, None])  # d(nll)/d(logits): softmax minus the one-hot target
            g[torch.arange(g.shape[0], device=g.device), y] -= 1
            if softcap:
                g *= 1 - (logits / softcap) ** 2
            g *= w[:, None].to(g.dtype) * (scale / n.to(g.dtype))  # in g's precision: float64 stays exact
            if grad_h is not None:
                grad_h[s : s + chunk] = (g.to(h.dtype) @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += float32_product(g.t().to(h.dtype), h)
            if grad_b is not None:
                grad_b += g.sum(0)
        ctx.save_for_backward(
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
        )
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_out.to(g.dtype)  # noqa: E731
        return scale(grad_h), scale(grad_w), scale(grad_b), None, None, None, None

"""Token-level distillation losses between a student and a teacher, and the student's cross-entropy,
computed a chunk of positions at a time: no [batch, seq, vocab] float32 tensor is ever built.

P is the teacher's next-token distribution, Q the student's, both at temperature T
(softmax(logits / T)). Every loss is a divergence, zero when the student matches the teacher:

  forward_kl       KL(P || Q)                                   vanilla KD: MiniPLM's baseline
                                                                (thu-coai/MiniPLM vanilla_kd/trainer.py, kd_ratio 0.5)
  reverse_kl       KL(Q || P)                                   MiniLLM's objective, token-level (microsoft/LMOps
                                                                minillm; DistiLLM's reverse_kl)
  jsd              beta KL(P || M) + (1 - beta) KL(Q || M),     generalised JSD as in TRL's GKD and Liger-Kernel's
                   M = beta P + (1 - beta) Q                    fused linear JSD; beta 0.5 is the symmetric JSD
  skew_forward_kl  KL(P || beta P + (1 - beta) Q)               DistiLLM's skew KL (jongwooko/distillm,
                                                                distillm/losses.py skewed_forward_kl, alpha 0.1)
  skew_reverse_kl  KL(Q || (1 - beta) P + beta Q)               DistiLLM's skew reverse KL (skewed_reverse_kl)

The official codes compute cross-entropy forms (-sum P log Q for forward KL, -sum P log mix for
skew KL): they differ from the divergences by the teacher's entropy, a constant for the student, so
the gradients are the same; a divergence reads as a distance (0: matched). The temperature divides
both models' logits (as Liger-Kernel and TRL do), with no T^2 factor: the KD weight absorbs it. The
loss is the mean over predicted positions; miniplm's packed rows have no padding, so every position
counts (the official codes mask prompt and padding positions, which pretraining rows do not have).

The teacher is either the full distribution (online: its logits from its hidden states, a chunk at
a time) or its top-k tokens with their log-probabilities and the log of the remaining mass
(offline, stored by the teacher-logits stage). Top-k compares both models on k + 1 outcomes: the k
tokens, and "any other token" (the student's mass there is what its top-k tokens leave). With k
equal to the vocabulary there is no remaining mass and the loss is the full one. With fewer, every
loss here is an f-divergence, so collapsing outcomes can only lower it (the data-processing
inequality): top-k is a lower bound of the full loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from miniplm.models.linear_ce import Head, chunk_rows, head_logits

LossName = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
LOSSES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl")
DEFAULT_BETA = {"jsd": 0.5, "skew_forward_kl": 0.1, "skew_reverse_kl": 0.1}  # TRL/Liger; DistiLLM's alpha
CHUNK_BYTES = 64 << 20  # per [chunk, vocab] float32 tensor; a chunk holds a handful of them


@dataclass(frozen=True)
class KDLoss:
    """Which divergence, at which temperature, with which mixing coefficient (jsd, skew losses)."""

    loss: LossName = "forward_kl"
    temperature: float = 1.0
    beta: float | None = None

    @property
    def mixing(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.loss, 0.5)


def _kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities over the last axis (0 log 0 = 0)."""
    return (lp.exp() * (lp - lq)).sum(-1)


def divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, kd: KDLoss) -> torch.Tensor:
    """The loss per position, from both models' log-probabilities over the same outcomes ([n, m])."""
    # -inf (an outcome one model cannot produce) would make 0 * inf = nan; the most negative finite
    # float gives exp() = 0 and keeps every term finite, gradients included.
    floor = torch.finfo(student_logp.dtype).min
    lp, lq = teacher_logp.clamp_min(floor), student_logp.clamp_min(floor)
    b = kd.mixing
    if kd.loss == "forward_kl":
        return _kl(lp, lq)
    if kd.loss == "reverse_kl":
        return _kl(lq, lp)
    if kd.loss == "jsd":
        lm = torch.logaddexp(lp + math.log(b), lq + math.log1p(-b))
        return b * _kl(lp, lm) + (1 - b) * _kl(lq, lm)
    if kd.loss == "skew_forward_kl":
        return _kl(lp, torch.logaddexp(lp + math.log(b), lq + math.log1p(-b)))
    if kd.loss == "skew_reverse_kl":
        return _kl(lq, torch.logaddexp(lp + math.log1p(-b), lq + math.log(b)))
    raise ValueError(f"unknown KD loss {kd.loss!r} (losses: {', '.join(LOSSES)})")


def topk_outcomes(student_logp: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor, rest: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' log-probabilities over the teacher's top-k tokens and, unless `rest` is None
    (k is the whole vocabulary), the outcome "any other token": (teacher [n, k(+1)], student)."""
    student_k = student_logp.gather(1, ids)
    if rest is None:
        return logp, student_k
    others = student_logp.scatter(1, ids, float("-inf"))  # k < vocab: never all -inf
    return (torch.cat([logp, rest[:, None]], dim=1),
            torch.cat([student_k, torch.logsumexp(others, dim=1, keepdim=True)], dim=1))


@dataclass
class OnlineTeacher:
    """The teacher's final hidden states ([positions, d_teacher], no grad), its output layer, and
    the student's vocabulary (the first `vocab` of the teacher's logits; the rest is padding)."""

    hidden: torch.Tensor
    head: Head
    vocab: int

    def logits(self, start: int, end: int) -> torch.Tensor:
        return head_logits(self.hidden[start:end], self.head)[:, : self.vocab]


@dataclass
class TopKTeacher:
    """Stored top-k per position: token ids [positions, k], their log-probabilities at the KD
    temperature, and the log of the remaining mass (None when k is the whole vocabulary)."""

    ids: torch.Tensor
    logp: torch.Tensor
    rest: torch.Tensor | None


Teacher = OnlineTeacher | TopKTeacher


def _chunk_sums(hidden: torch.Tensor, targets: torch.Tensor, head: Head, kd: KDLoss, teacher: Teacher,
                start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of cross-entropy and KD loss over positions [start, end) (hidden: those positions)."""
    logits = head_logits(hidden, head)
    ce = F.cross_entropy(logits, targets, reduction="sum")
    student = torch.log_softmax(logits / kd.temperature, dim=-1)
    if isinstance(teacher, OnlineTeacher):
        with torch.no_grad():
            teacher_logp = torch.log_softmax(teacher.logits(start, end) / kd.temperature, dim=-1)
    else:
        rest = None if teacher.rest is None else teacher.rest[start:end].float()
        teacher_logp, student = topk_outcomes(student, teacher.ids[start:end], teacher.logp[start:end].float(), rest)
    return ce, divergence(teacher_logp, student, kd).sum()


class _ChunkedDistillation(torch.autograd.Function):
    """(1 - w) CE + w KD, averaged over positions, through the student's output layer a chunk of
    positions at a time. The gradients are computed in the forward pass, while each chunk's logits
    are at hand, so that neither pass holds more than one chunk of [chunk, vocab] tensors and the
    output layer's weight is not needed after the forward pass (ZeRO-3 frees it); the backward pass
    only scales them. Returns the loss, and its CE and KD means (for reporting, no gradient)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, softcap, kd, kd_weight, teacher, chunk):
        n = hidden.shape[0]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if want_b and bias is not None else None
        sums = torch.zeros(2, dtype=acc, device=hidden.device)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            with torch.enable_grad():
                h = hidden[start:end].detach().requires_grad_(want_h)
                w = weight.detach().requires_grad_(want_w)
                b = bias.detach().requires_grad_(want_b) if bias is not None else None
                ce, kd_sum = _chunk_sums(h, targets[start:end], Head(w, b, scale, softcap), kd, teacher, start, end)
                leaves = [t for t in (h, w, b) if t is not None and t.requires_grad]
                if leaves:
                    grads = iter(torch.autograd.grad(((1 - kd_weight) * ce + kd_weight * kd_sum) / n, leaves))
            if grad_h is not None:
                grad_h[start:end] = next(grads)
            if grad_w is not None:
                grad_w += next(grads)
            if grad_b is not None:
                grad_b += next(grads)
            sums += torch.stack([ce.detach(), kd_sum.detach()]).to(acc)
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                              None if grad_b is None else grad_b.to(bias.dtype))
        ce_mean, kd_mean = sums[0] / n, sums[1] / n
        ctx.mark_non_differentiable(ce_mean, kd_mean)
        return (1 - kd_weight) * ce_mean + kd_weight * kd_mean, ce_mean, kd_mean

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_kd):
        grad_h, grad_w, grad_b = (None if g is None else g * grad_loss.to(g.dtype) for g in ctx.saved_tensors)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None


def distill_losses(hidden: torch.Tensor, targets: torch.Tensor, head: Head, kd: KDLoss, teacher: Teacher,
                   kd_weight: float, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mean CE, mean KD) over positions, loss = (1 - kd_weight) CE + kd_weight KD, from the
    student's final hidden states ([positions, d]), the targets and its output layer; differentiable
    with respect to the hidden states and the layer's weight (and bias)."""
    chunk = chunk or chunk_rows(head.weight.shape[0], CHUNK_BYTES)
    return _ChunkedDistillation.apply(hidden, head.weight, head.bias, targets, head.scale, head.softcap, kd,
                                      kd_weight, teacher, chunk)


# liger-kernel's generalised JSD: beta 0 is KL(P || Q), 1 is KL(Q || P), between them this module's jsd
LIGER_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}


def liger_applies(kd: KDLoss, head: Head, teacher: Teacher) -> bool:
    """Whether liger-kernel's fused linear JSD computes this loss: online, forward/reverse KL or
    JSD, and output layers that are a plain projection (no bias, scale or soft cap)."""
    plain = lambda h: h.bias is None and h.scale == 1.0 and not h.softcap  # noqa: E731
    return (isinstance(teacher, OnlineTeacher) and kd.loss in ("forward_kl", "reverse_kl", "jsd") and plain(head)
            and plain(teacher.head))


def liger_distill_losses(hidden: torch.Tensor, targets: torch.Tensor, head: Head, kd: KDLoss, teacher: OnlineTeacher,
                         kd_weight: float, compiled: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`distill_losses` through liger-kernel's fused linear JSD (its chunked loss computes the
    gradients in the forward pass too, and compiles the chunk with torch.compile): the same
    definitions, temperature and weights, for the losses `liger_applies` accepts."""
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    fused = LigerFusedLinearJSDLoss(weight_hard_loss=1 - kd_weight, weight_soft_loss=kd_weight,
                                    beta=LIGER_BETA.get(kd.loss, kd.mixing), temperature=kd.temperature,
                                    compiled=compiled, return_soft_hard_loss=True)
    loss, kd_mean, ce_mean = fused(hidden, head.weight, teacher.hidden, teacher.head.weight[: teacher.vocab], targets)
    return loss, ce_mean.detach(), kd_mean.detach()

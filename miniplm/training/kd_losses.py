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

The teacher is the full distribution (online: its logits from its hidden states, a chunk at a
time), or what the teacher-logits stage stored (training/logit_modes.py). Its top-k (or top-p)
tokens with their log-probabilities and the log of the remaining mass compare both models on k + 1
outcomes: the k tokens, and "any other token" (the student's mass there is what its top-k tokens
leave). With k equal to the vocabulary there is no remaining mass and the loss is the full one.
With fewer, every loss here is an f-divergence, so collapsing outcomes can only lower it (the
data-processing inequality): top-k is a lower bound of the full loss, biased. Tokens drawn from the
teacher give forward KL's unbiased estimate instead: the draws' mean of log P(x) - log Q(x), whose
gradient with respect to the student's logits is its distribution less the draws' frequencies.
CE and KD share each chunk's projection and log-sum-exp.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch

from miniplm.models.linear_ce import Head, chunk_rows, float32_product, head_logits

LossName = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
LOSSES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl")
DEFAULT_BETA = {"jsd": 0.5, "skew_forward_kl": 0.1, "skew_reverse_kl": 0.1}  # TRL/Liger; DistiLLM's alpha
# Per [chunk, vocab] float32 tensor; a chunk holds a handful of them. On a GPU, small chunks cost more
# than their memory saves: each adds the [vocab, d] float32 weight gradient once more, and launches.
CHUNK_BYTES = {"cpu": 64 << 20, "cuda": 512 << 20}


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
    """Stored top-k (or top-p) per position: token ids [positions, k], their log-probabilities at
    the KD temperature, and the log of the remaining mass (None when k is the whole vocabulary).
    Top-p keeps fewer than k at some positions: their unused slots have log-probability -inf and
    repeat a kept id (`valid` marks the slots in use)."""

    ids: torch.Tensor
    logp: torch.Tensor
    rest: torch.Tensor | None
    valid: torch.Tensor | None = None


@dataclass
class SampledTeacher:
    """k tokens per position drawn from the teacher's distribution at the KD temperature (with
    replacement: a token drawn twice is there twice), and their log-probabilities [positions, k]."""

    ids: torch.Tensor
    logp: torch.Tensor


Teacher = OnlineTeacher | TopKTeacher | SampledTeacher


def _outcome_grads(
    teacher_logp: torch.Tensor, student_logp: torch.Tensor, kd: KDLoss, counted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The KD sum over a chunk's counted positions, and its gradient with respect to the student's
    log-probabilities of the outcomes compared ([positions, outcomes]): autograd over this small
    graph only."""
    if kd.loss == "forward_kl":  # in closed form: d/d log q_i of sum_i p_i (log p_i - log q_i) is -p_i
        floor = torch.finfo(student_logp.dtype).min
        terms = divergence(teacher_logp, student_logp, kd)
        grad = -teacher_logp.clamp_min(floor).exp().to(student_logp.dtype)
        return torch.where(counted, terms, 0).sum(), torch.where(counted[:, None], grad, 0)
    with torch.enable_grad():
        leaf = student_logp.detach().requires_grad_()
        # where(), not a product: an uncounted position's terms may be anything, nan included
        kd_sum = torch.where(counted, divergence(teacher_logp, leaf, kd), 0).sum()
        (grad,) = torch.autograd.grad(kd_sum, leaf)
    return kd_sum.detach(), grad


@torch.no_grad()
def _chunk_grads(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    counted: torch.Tensor,
    head: Head,
    kd: KDLoss,
    teacher: Teacher,
    start: int,
    end: int,
    kd_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums of cross-entropy and KD loss over the counted positions among [start, end) (hidden:
    those positions; targets: any token id where not counted), and the gradient of (1 - w) CE + w KD
    with respect to the output layer's pre-activations (h W + b), in closed form: the divergence's
    gradient over the outcomes it compares (all tokens, or the top k and "any other"), carried to
    the logits through the log-softmax by hand, so no autograd graph over [chunk, vocab] tensors is
    kept. Uncounted positions get no gradient."""
    logits = head_logits(hidden, head)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    ce = torch.where(counted, lse.squeeze(1) - logits.gather(1, targets[:, None]).squeeze(1), 0).sum()
    t = kd.temperature
    z = logits / t if t != 1.0 else logits
    lse_t = torch.logsumexp(z, dim=-1, keepdim=True) if t != 1.0 else lse
    p = torch.exp(z - lse_t)  # the student's distribution at temperature t
    if isinstance(teacher, OnlineTeacher):
        teacher_logp = torch.log_softmax(teacher.logits(start, end) / t, dim=-1)
        kd_sum, g = _outcome_grads(teacher_logp, z - lse_t, kd, counted)
        # d log p_i / d z_j = [i = j] - p_j
        dz = g - p * g.sum(-1, keepdim=True)
    elif isinstance(teacher, SampledTeacher):
        # the draws' mean of log P(x) - log Q(x): unbiased for KL(P || Q); its gradient with respect to
        # z is the student's distribution less the draws' frequencies, unbiased for q - p
        ids = teacher.ids[start:end]
        draws = ids.shape[1]
        logq = z.gather(1, ids) - lse_t
        kd_sum = torch.where(counted, (teacher.logp[start:end].to(logits.dtype) - logq).mean(1), 0).sum()
        dz = p.clone().scatter_add_(1, ids, torch.full_like(logq, -1.0 / draws))
    else:
        ids = teacher.ids[start:end]
        z_k = z.gather(1, ids)
        logp_k = z_k - lse_t
        if teacher.valid is not None:  # top-p's unused slots: no mass on either side, so no term
            logp_k = logp_k.masked_fill(~teacher.valid[start:end], float("-inf"))
        teacher_logp = teacher.logp[start:end].to(logits.dtype)
        if teacher.rest is None:  # k = vocabulary
            kd_sum, g = _outcome_grads(teacher_logp, logp_k, kd, counted)
            dz = (-p * g.sum(-1, keepdim=True)).scatter_add_(1, ids, g)
        else:
            # "any other token": log of the student's mass outside the top k, from the logits themselves
            # (1 - sum of the top k's probabilities would lose it to rounding when it is small)
            logp_rest = torch.logsumexp(z.scatter(1, ids, float("-inf")), dim=-1, keepdim=True) - lse_t
            rest = teacher.rest[start:end, None].to(logits.dtype)
            kd_sum, g = _outcome_grads(
                torch.cat([teacher_logp, rest], 1), torch.cat([logp_k, logp_rest], 1), kd, counted
            )
            g_k, g_rest = g[:, :-1], g[:, -1:]
            # d log q_rest / d z_j = [j not in top k] p_j / q_rest - p_j
            per_rest = g_rest * torch.exp(-logp_rest)
            dz = (p * (per_rest - g.sum(-1, keepdim=True))).scatter_add_(1, ids, g_k - torch.exp(logp_k) * per_rest)
    grad = dz.mul_(kd_weight / t)
    softmax = p if t == 1.0 else torch.exp(logits - lse)
    grad.add_(softmax, alpha=1 - kd_weight)
    grad.scatter_add_(1, targets[:, None], torch.full_like(lse, -(1 - kd_weight)))
    if head.softcap:  # logits = softcap tanh(scale (h W + b) / softcap)
        grad *= 1 - (logits / head.softcap) ** 2
    if head.scale != 1.0:
        grad *= head.scale
    return ce, kd_sum, torch.where(counted[:, None], grad, 0)


class _ChunkedDistillation(torch.autograd.Function):
    """(1 - w) CE + w KD, averaged over positions, through the student's output layer a chunk of
    positions at a time. The gradients are computed in the forward pass, while each chunk's logits
    are at hand, so that neither pass holds more than one chunk of [chunk, vocab] tensors and the
    output layer's weight is not needed after the forward pass (ZeRO-3 frees it); the backward pass
    only scales them. Returns the loss, and its CE and KD means (for reporting, no gradient)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, softcap, kd, kd_weight, teacher, chunk, ignore_index, grads):
        counted = targets != ignore_index
        targets = torch.where(counted, targets, 0)
        n = counted.sum().clamp(min=1)  # a tensor: no wait for the host
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if want_b and bias is not None else None
        sums = torch.zeros(2, dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            h = hidden[start:end]
            ce, kd_sum, g = grads(
                h,
                targets[start:end],
                counted[start:end],
                Head(weight, bias, scale, softcap),
                kd,
                teacher,
                start,
                end,
                kd_weight,
            )
            g /= n.to(g.dtype)
            if grad_h is not None:
                grad_h[start:end] = (g.to(h.dtype) @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += float32_product(g.t().to(h.dtype), h)
            if grad_b is not None:
                grad_b += g.sum(0)
            sums += torch.stack([ce, kd_sum]).to(acc)
        ctx.save_for_backward(
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
        )
        ce_mean, kd_mean = sums[0] / n.to(acc), sums[1] / n.to(acc)
        ctx.mark_non_differentiable(ce_mean, kd_mean)
        return (1 - kd_weight) * ce_mean + kd_weight * kd_mean, ce_mean, kd_mean

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_kd):
        grad_h, grad_w, grad_b = (None if g is None else g * grad_loss.to(g.dtype) for g in ctx.saved_tensors)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None, None


@functools.cache
def _compiled_chunk_grads():
    """`_chunk_grads` through torch.compile: each chunk's projection, log-softmax, KD term and
    gradient fused into a few kernels (compiled once per chunk shape)."""
    return torch.compile(_chunk_grads, dynamic=False)


def distill_losses(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Head,
    kd: KDLoss,
    teacher: Teacher,
    kd_weight: float,
    chunk: int | None = None,
    ignore_index: int = -100,
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mean CE, mean KD) over the positions whose target is not `ignore_index` (0 when there
    are none), loss = (1 - kd_weight) CE + kd_weight KD, from the student's final hidden states
    ([positions, d]), the targets and its output layer; differentiable with respect to the hidden
    states and the layer's weight (and bias). Both models' distributions are over the same outcomes:
    the head and the teacher must have been cut to the same vocabulary (`Head.first`). CE and KD
    share each chunk's projection and log-sum-exp; `compiled` fuses each chunk with torch.compile."""
    _check_outcomes(head, teacher)
    if isinstance(teacher, SampledTeacher) and kd.loss != "forward_kl":
        raise ValueError(f"sampled teacher tokens estimate forward_kl only, not {kd.loss}")
    chunk = chunk or chunk_rows(head.weight.shape[0], CHUNK_BYTES.get(hidden.device.type, CHUNK_BYTES["cpu"]))
    grads = _compiled_chunk_grads() if compiled else _chunk_grads
    return _ChunkedDistillation.apply(
        hidden,
        head.weight,
        head.bias,
        targets,
        head.scale,
        head.softcap,
        kd,
        kd_weight,
        teacher,
        chunk,
        ignore_index,
        grads,
    )


def _check_outcomes(head: Head, teacher: Teacher) -> None:
    """The student's and the teacher's logits must cover the same tokens: a wider head (a model
    padded past its tokenizer) is cut with `Head.first` first, or the loss would compare apples and
    the first `vocab` pears."""
    vocab = head.weight.shape[0]
    if isinstance(teacher, OnlineTeacher) and teacher.vocab != vocab:
        raise ValueError(
            f"the student's head has {vocab} outcomes and the teacher's {teacher.vocab}: cut both "
            "to the tokenizer's vocabulary"
        )


# liger-kernel's generalised JSD: beta 0 is KL(P || Q), 1 is KL(Q || P), between them this module's jsd
LIGER_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}


def liger_applies(kd: KDLoss, head: Head, teacher: Teacher) -> bool:
    """Whether liger-kernel's fused linear JSD computes this loss: online, forward/reverse KL or
    JSD, and output layers that are a plain projection (no bias, scale or soft cap)."""
    plain = lambda h: h.bias is None and h.scale == 1.0 and not h.softcap  # noqa: E731
    return (
        isinstance(teacher, OnlineTeacher)
        and kd.loss in ("forward_kl", "reverse_kl", "jsd")
        and plain(head)
        and plain(teacher.head)
    )


def liger_distill_losses(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Head,
    kd: KDLoss,
    teacher: OnlineTeacher,
    kd_weight: float,
    compiled: bool = True,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`distill_losses` through liger-kernel's fused linear JSD (its chunked loss computes the
    gradients in the forward pass too, and compiles the chunk with torch.compile): the same
    definitions, temperature, weights and ignored targets, for the losses `liger_applies` accepts."""
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    _check_outcomes(head, teacher)
    fused = LigerFusedLinearJSDLoss(
        weight_hard_loss=1 - kd_weight,
        weight_soft_loss=kd_weight,
        beta=LIGER_BETA.get(kd.loss, kd.mixing),
        temperature=kd.temperature,
        ignore_index=ignore_index,
        compiled=compiled,
        return_soft_hard_loss=True,
    )
    loss, kd_mean, ce_mean = fused(hidden, head.weight, teacher.hidden, teacher.head.weight[: teacher.vocab], targets)
    return loss, ce_mean.detach(), kd_mean.detach()

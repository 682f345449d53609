"""The losses of the stored modes against float64 full-vocabulary distillation on tiny models: the
sampled estimate of forward KL is unbiased (its mean over many draws, value and gradient, within
their standard errors of the full loss), top-p equals the k + 1 outcome collapse written out
independently, and the compiled chunks equal the eager ones."""

import numpy as np
import pytest
import torch

from miniplm.models.linear_ce import Head, head_of
from miniplm.training.kd_losses import KDLoss, SampledTeacher, TopKTeacher, distill_losses
from miniplm.training.logit_modes import keep
from tests.training.kd_models import student_and_teacher

T = 1.5


@pytest.fixture(scope="module")
def setup(tiny_models):
    """float64 student hidden states and head, and the teacher's log-probs at T, for 48 positions."""
    student, teacher, ids = student_and_teacher(tiny_models, "float64", 80.0)  # peaked, as trained models are
    with torch.no_grad():
        hidden = student.base_model(input_ids=ids[:, :-1]).last_hidden_state.reshape(-1, 32)
        teacher_lp = torch.log_softmax(teacher.logits(teacher.side(ids[:, :-1]).hidden).double() / T, dim=-1)
    return hidden, ids[:, 1:].reshape(-1), head_of(student), teacher_lp


def _full_forward_kl(hidden, head: Head, teacher_lp):
    """KL(P || Q) at T, mean over positions, and its gradient with respect to the hidden states: float64
    autograd over the whole vocabulary."""
    h = hidden.clone().requires_grad_()
    log_q = torch.log_softmax(h @ head.weight.T / T, dim=-1)
    kl = (teacher_lp.exp() * (teacher_lp - log_q)).sum(-1).mean()
    kl.backward()
    return float(kl.detach()), h.grad


def _kd(hidden, targets, head, teacher, loss="forward_kl", compiled=False):
    """The KD term alone (weight 1) and its gradient with respect to the hidden states."""
    h = hidden.clone().requires_grad_()
    value, _, kd = distill_losses(h, targets, head, KDLoss(loss, T), teacher, 1.0, chunk=7, compiled=compiled)
    value.backward()
    return float(kd), h.grad


def test_the_sampled_estimate_of_forward_kl_and_its_gradient_are_unbiased(setup):
    hidden, targets, head, teacher_lp = setup
    full, full_grad = _full_forward_kl(hidden, head, teacher_lp)
    draws = 400
    values, grads = [], []
    for r in range(draws):
        kept = keep(teacher_lp, "sampled", 4, generator=torch.Generator().manual_seed(r))
        value, grad = _kd(hidden, targets, head, SampledTeacher(kept.ids, kept.logp))
        values.append(value)
        grads.append(grad)
    values, grads = np.array(values), torch.stack(grads)
    se = values.std(ddof=1) / np.sqrt(draws)
    assert abs(values.mean() - full) <= 4 * se, (values.mean(), full, se)
    # top-4 of the same teacher (its k + 1 outcomes): a lower bound, below by far more than that error
    kept = keep(teacher_lp, "top_k", 4)
    top, _ = _kd(hidden, targets, head, TopKTeacher(kept.ids, kept.logp, kept.rest))
    assert full - top > 10 * se > 0
    # the gradient (1,536 numbers): unbiased, the squared distance of the draws' mean from the full
    # gradient is what the draws' own spread predicts (sum of variances / draws), about 1 as a ratio;
    # a bias would add its square to it. And along random directions, within 4 standard errors.
    distance = float(((grads.mean(0) - full_grad) ** 2).sum())
    predicted = float(grads.var(0, unbiased=True).sum()) / draws
    assert 0.7 <= distance / predicted <= 1.4, distance / predicted
    assert distance < 0.05 * float((full_grad**2).sum())
    directions = torch.randn(8, *full_grad.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    along = (grads[:, None] * directions).sum((2, 3))  # [draws, directions]
    want = (full_grad * directions).sum((1, 2))
    assert ((along.mean(0) - want).abs() <= 4 * along.std(0) / np.sqrt(draws)).all()


def _collapsed64(teacher_lp, log_q, kept_ids, loss, beta=0.5):
    """The divergence over each position's kept tokens and "any other", numpy float64, written out."""
    out = []
    for i, ids in enumerate(kept_ids):
        p = np.exp(teacher_lp[i, ids])
        q = np.exp(log_q[i, ids])
        p, q = np.append(p, 1 - p.sum()), np.append(q, 1 - q.sum())
        m = beta * p + (1 - beta) * q
        kl = lambda a, b: float((a * np.log(a / b)).sum())  # noqa: E731
        out.append(
            {"forward_kl": kl(p, q), "reverse_kl": kl(q, p), "jsd": beta * kl(p, m) + (1 - beta) * kl(q, m)}[loss]
        )
    return float(np.mean(out))


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_top_p_compares_the_kept_tokens_and_the_rest_as_written_out(setup, loss):
    hidden, targets, head, teacher_lp = setup
    kept = keep(teacher_lp, "top_p", 32, 0.9)
    # the fewest most likely tokens whose mass reaches 0.9, at most 32
    probs = np.sort(teacher_lp.exp().numpy(), axis=1)[:, ::-1]
    want = np.minimum((np.cumsum(probs, axis=1) < 0.9).sum(1) + 1, 32)
    assert np.array_equal(kept.counts.numpy(), want) and len(set(want)) > 3
    valid = torch.arange(32) < kept.counts[:, None]
    value, grad = _kd(hidden, targets, head, TopKTeacher(kept.ids, kept.logp, kept.rest, valid), loss)
    log_q = torch.log_softmax(hidden @ head.weight.T / T, dim=-1)
    kept_ids = [kept.ids[i, : kept.counts[i]].numpy() for i in range(len(kept.ids))]
    assert value == pytest.approx(_collapsed64(teacher_lp.numpy(), log_q.numpy(), kept_ids, loss), rel=1e-6)
    # the gradient: float64 autograd through the same collapse, in torch
    h = hidden.clone().requires_grad_()
    log_q = torch.log_softmax(h @ head.weight.T / T, dim=-1)
    terms = []
    for i, ids in enumerate(kept_ids):
        ids = torch.from_numpy(ids)
        p, q = teacher_lp[i, ids].exp(), log_q[i, ids].exp()
        p, q = torch.cat([p, 1 - p.sum(0, keepdim=True)]), torch.cat([q, 1 - q.sum(0, keepdim=True)])
        m = 0.5 * p + 0.5 * q
        kl = lambda a, b: (a * (a / b).log()).sum()  # noqa: E731
        terms.append({"forward_kl": kl(p, q), "reverse_kl": kl(q, p), "jsd": 0.5 * kl(p, m) + 0.5 * kl(q, m)}[loss])
    torch.stack(terms).mean().backward()
    assert torch.allclose(grad, h.grad, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("mode", ["top_p", "sampled"])
def test_compiled_chunks_give_the_eager_loss_and_gradient(setup, mode):
    hidden, targets, head, teacher_lp = setup
    kept = keep(teacher_lp.float(), mode, 16, 0.8 if mode == "top_p" else None, torch.Generator().manual_seed(0))
    if mode == "sampled":
        teacher = SampledTeacher(kept.ids, kept.logp)
    else:
        teacher = TopKTeacher(kept.ids, kept.logp, kept.rest, torch.arange(16) < kept.counts[:, None])
    eager = _kd(hidden, targets, head, teacher)
    compiled = _kd(hidden, targets, head, teacher, compiled=True)
    assert compiled[0] == pytest.approx(eager[0], rel=1e-9)
    assert torch.allclose(compiled[1], eager[1], rtol=1e-9, atol=1e-12)


def test_sampled_tokens_refuse_the_losses_they_cannot_estimate(setup):
    hidden, targets, head, teacher_lp = setup
    kept = keep(teacher_lp, "sampled", 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="forward_kl only, not reverse_kl"):
        _kd(hidden, targets, head, SampledTeacher(kept.ids, kept.logp), "reverse_kl")

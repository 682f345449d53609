"""The distillation losses against an independent float64 computation on tiny models: each loss at two
temperatures, their gradients, and top-k teachers (k = vocabulary: the full loss; k = 32: a lower
bound within a stated margin)."""

import numpy as np
import pytest
import torch

from miniplm.models.linear_ce import head_of
from miniplm.training.kd_losses import DEFAULT_BETA, LOSSES, KDLoss, TopKTeacher, distill_losses
from miniplm.training.teacher import Teacher
from tests.training.kd_models import VOCAB, student_and_teacher

CHUNK = 7  # positions per chunk: 48 positions make 7 chunks, the last one short


@pytest.fixture(scope="module")
def models(tiny_models):
    """A student (the tiny Qwen2) and a teacher (the tiny Llama) sharing a 300-token vocabulary, and a batch;
    the teacher sharper than random weights give, so that the distributions differ clearly."""
    return student_and_teacher(tiny_models, "float32", 8.0)


def _mean_divergence64(
    loss: str, teacher_logits: np.ndarray, student_logits: np.ndarray, t: float, beta: float
) -> float:
    """The loss in probability space, float64 numpy: the definitions, written out."""

    def softmax(z):
        e = np.exp(z / t - (z / t).max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def kl(a, b):
        return (a * np.log(a / b)).sum(-1)

    p, q = softmax(teacher_logits), softmax(student_logits)
    value = {
        "forward_kl": lambda: kl(p, q),
        "reverse_kl": lambda: kl(q, p),
        "jsd": lambda: beta * kl(p, beta * p + (1 - beta) * q) + (1 - beta) * kl(q, beta * p + (1 - beta) * q),
        "skew_forward_kl": lambda: kl(p, beta * p + (1 - beta) * q),
        "skew_reverse_kl": lambda: kl(q, (1 - beta) * p + beta * q),
    }[loss]()
    return float(value.mean())


def _divergence(loss: str, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The loss per position from the teacher's and the student's probabilities (torch, for autograd)."""
    b = DEFAULT_BETA.get(loss, 0.5)

    def kl(a, c):
        return (a * (a / c).log()).sum(-1)

    return {
        "forward_kl": lambda: kl(p, q),
        "reverse_kl": lambda: kl(q, p),
        "jsd": lambda: b * kl(p, b * p + (1 - b) * q) + (1 - b) * kl(q, b * p + (1 - b) * q),
        "skew_forward_kl": lambda: kl(p, b * p + (1 - b) * q),
        "skew_reverse_kl": lambda: kl(q, (1 - b) * p + b * q),
    }[loss]()


def _top_k(teacher, hidden, k, temperature):
    kept = teacher.keep(hidden, "top_k", k, temperature)
    return kept.ids, kept.logp, kept.rest


def _student_side(student, ids):
    hidden = student.base_model(input_ids=ids[:, :-1]).last_hidden_state.reshape(-1, 32).detach().requires_grad_()
    return hidden, ids[:, 1:].reshape(-1), head_of(student)


def _full_logits64(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=ids[:, :-1]).logits.double().reshape(-1, VOCAB).numpy()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_equals_a_float64_computation_at_two_temperatures(models, loss, temperature):
    student, teacher, ids = models
    hidden, targets, head = _student_side(student, ids)
    kd = KDLoss(loss, temperature)
    total, ce, value = distill_losses(hidden, targets, head, kd, teacher.side(ids[:, :-1]), 1.0, chunk=CHUNK)
    z_student, z_teacher = _full_logits64(student, ids), _full_logits64(teacher.model, ids)
    expected = _mean_divergence64(loss, z_teacher, z_student, temperature, DEFAULT_BETA.get(loss, 0.5))
    assert expected > 0.005  # the models differ: a loss that ignored its inputs could not pass
    assert float(value) == float(total.detach()) == pytest.approx(expected, rel=2e-6, abs=1e-7)
    log_q = z_student - np.log(np.exp(z_student).sum(-1, keepdims=True))
    assert float(ce) == pytest.approx(-log_q[np.arange(len(targets)), targets.numpy()].mean(), rel=2e-6)

    # the gradient computed chunk by chunk, against autograd in float64 over the whole batch
    total.backward()
    h64 = hidden.detach().double().requires_grad_()
    z64 = h64 @ student.get_output_embeddings().weight.double().T
    p = torch.softmax(torch.from_numpy(z_teacher) / temperature, -1)
    q = torch.softmax(z64 / temperature, -1)
    _divergence(loss, p, q).mean().backward()
    assert torch.allclose(hidden.grad.double(), h64.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("loss", LOSSES)
def test_top_k_of_the_whole_vocabulary_is_the_full_loss(models, loss):
    student, teacher, ids = models
    hidden, targets, head = _student_side(student, ids)
    kd = KDLoss(loss, 1.7)
    online = distill_losses(hidden, targets, head, kd, teacher.side(ids[:, :-1]), 0.5)
    top_ids, top_logp, rest = _top_k(teacher, teacher.side(ids[:, :-1]).hidden, VOCAB, 1.7)
    assert torch.isneginf(rest).all()  # nothing is left over
    online[0].backward()
    online_grad, hidden.grad = hidden.grad.clone(), None
    offline = distill_losses(hidden, targets, head, kd, TopKTeacher(top_ids, top_logp, None), 0.5, chunk=CHUNK)
    offline[0].backward()
    for a, b in zip(offline, online):
        assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-5)
    assert torch.allclose(hidden.grad, online_grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("loss", LOSSES)
def test_top_32_is_a_lower_bound_within_the_stated_margin(models, loss):
    """Top-k compares the models on k + 1 outcomes (the k tokens and "any other"): an f-divergence of
    coarser distributions, never above the full one. For forward KL the gap has a bound computed from
    what is stored and the student: per position, with r the teacher's remaining mass, p_k its k-th
    probability and q~ the student's distribution over the other tokens,
        0 <= KL(P || Q) - KL_top-k <= r * (log p_k - log r - min log q~)."""
    student, teacher, ids = models
    hidden, targets, head = _student_side(student, ids)
    kd = KDLoss(loss, 1.0)
    online = teacher.side(ids[:, :-1])
    _, _, full = distill_losses(hidden, targets, head, kd, online, 1.0)
    top_ids, top_logp, rest = _top_k(teacher, online.hidden, 32, 1.0)
    _, _, top = distill_losses(hidden, targets, head, kd, TopKTeacher(top_ids, top_logp, rest), 1.0, chunk=CHUNK)
    assert 0 < float(top) <= float(full) + 1e-6
    if loss != "forward_kl":
        return
    with torch.no_grad():
        log_q = torch.log_softmax(hidden.double() @ head.weight.double().T, -1)
    others = torch.ones_like(log_q, dtype=torch.bool).scatter(1, top_ids, False)
    log_rest_q = torch.logsumexp(log_q.masked_fill(~others, float("-inf")), -1)
    min_log_q_tilde = (log_q - log_rest_q[:, None]).masked_fill(~others, float("inf")).min(-1).values
    r = rest.double()
    bound = (r.exp() * (top_logp[:, -1].double() - r - min_log_q_tilde)).mean()
    gap = float(full) - float(top)
    assert 0 <= gap <= float(bound) + 1e-6
    assert rest.exp().mean() > 0.05  # the top 32 leave real mass over: the bound is not met trivially


@pytest.mark.parametrize("loss", LOSSES)
def test_top_32_loss_and_gradient_equal_float64_autograd_through_a_biased_scaled_capped_head(models, loss):
    """The top-k gradient is carried to the logits by hand: against autograd in float64 over the k + 1
    outcomes (the student's remaining mass as 1 - its top-k probabilities), through an output layer
    with a bias, a logit scale and a soft cap."""
    from miniplm.models.linear_ce import Head

    student, teacher, ids = models
    hidden, targets, _ = _student_side(student, ids)
    weight = student.get_output_embeddings().weight.detach()
    bias = torch.linspace(-0.3, 0.3, VOCAB)
    head = Head(weight, bias, 0.7, 5.0)
    t, w = 1.3, 0.3
    top_ids, top_logp, rest = _top_k(teacher, teacher.side(ids[:, :-1]).hidden, 32, t)
    kd = KDLoss(loss, t)
    total, ce, value = distill_losses(hidden, targets, head, kd, TopKTeacher(top_ids, top_logp, rest), w, chunk=CHUNK)
    total.backward()

    h64 = hidden.detach().double().requires_grad_()
    z = torch.tanh((h64 @ weight.double().T + bias.double()) * 0.7 / 5.0) * 5.0
    q_k = torch.softmax(z / t, -1).gather(1, top_ids)
    q = torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], 1)
    p = torch.cat([top_logp.double(), rest.double()[:, None]], 1).exp()
    kd64 = _divergence(loss, p, q).mean()
    ce64 = torch.nn.functional.cross_entropy(z, targets)
    ((1 - w) * ce64 + w * kd64).backward()
    assert float(value) == pytest.approx(float(kd64.detach()), rel=1e-4)
    assert float(ce) == pytest.approx(float(ce64), rel=1e-6)
    assert torch.allclose(hidden.grad.double(), h64.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_liger_fused_loss_matches_the_chunked_one(models, loss):
    """liger-kernel's fused linear JSD, which training uses on CUDA when it is installed: its chunked
    loss is plain torch (Triton is for its other kernels), so the CPU checks it against ours."""
    pytest.importorskip("liger_kernel.chunked_loss")
    from miniplm.training.kd_losses import liger_applies, liger_distill_losses

    student, teacher, ids = models
    hidden, targets, head = _student_side(student, ids)
    online = teacher.side(ids[:, :-1])
    kd = KDLoss(loss, 2.0, 0.3 if loss == "jsd" else None)
    assert liger_applies(kd, head, online)
    ours = distill_losses(hidden, targets, head, kd, online, 0.4, chunk=CHUNK)
    ours[0].backward()
    our_grad, hidden.grad = hidden.grad.clone(), None
    fused = liger_distill_losses(hidden, targets, head, kd, online, 0.4, compiled=False)
    fused[0].backward()
    for a, b in zip(fused, ours):
        assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-5)
    assert torch.allclose(hidden.grad, our_grad, rtol=1e-4, atol=1e-8)


def _padded(ids: torch.Tensor) -> torch.Tensor:
    """The batch as right-padded instance rows: the first row ends 9 tokens early (PAD = -1)."""
    from miniplm.corpus.instance_rows import PAD

    padded = ids.clone()
    padded[0, -9:] = PAD
    return padded


def _masked_reference64(student, teacher_model, rows: torch.Tensor, head_rows: int, loss: str, t: float, w: float):
    """(1 - w) CE + w KD over the positions whose target is not PAD, in float64 over the tokenizer's
    first VOCAB tokens, written out without miniplm's code; and the gradient of the loss with respect
    to the student's hidden states at every position (zero where nothing is predicted)."""
    inputs, targets = rows[:, :-1].clamp(min=0), rows[:, 1:].reshape(-1)
    keep = targets >= 0
    with torch.no_grad():
        z_teacher = teacher_model(input_ids=inputs).logits.double().reshape(keep.shape[0], -1)[:, :VOCAB]
    h = student.base_model(input_ids=inputs).last_hidden_state.reshape(keep.shape[0], -1).detach().double()
    h.requires_grad_()
    z = (h @ student.get_output_embeddings().weight.double().T)[:, :head_rows][:, :VOCAB]
    p, q = torch.softmax(z_teacher[keep] / t, -1), torch.softmax(z[keep] / t, -1)
    ce = torch.nn.functional.cross_entropy(z[keep], targets[keep])
    kd = _divergence(loss, p, q).mean()
    ((1 - w) * ce + w * kd).backward()
    return float(ce), float(kd), h.grad


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl"])
def test_padded_instance_rows_predict_no_pad_target(models, loss):
    """A padded instance row (score.unit: instance) reaches the KD loss with PAD targets and PAD
    inputs: nothing is predicted there, by CE or KD, online or from stored top-k; the loss and the
    gradient equal a float64 computation over the other positions only."""
    from miniplm.corpus.instance_rows import PAD

    student, teacher, ids = models
    rows = _padded(ids)
    ce64, kd64, grad64 = _masked_reference64(student, teacher.model, rows, VOCAB, loss, 1.5, 0.4)
    hidden = student.base_model(input_ids=rows[:, :-1].clamp(min=0)).last_hidden_state.reshape(-1, 32)
    hidden = hidden.detach().requires_grad_()
    targets, head, kd = rows[:, 1:].reshape(-1), head_of(student), KDLoss(loss, 1.5)
    online = teacher.side(rows[:, :-1])
    stored = TopKTeacher(*_top_k(teacher, online.hidden, VOCAB, 1.5)[:2], None)  # k = vocabulary: the full loss
    for side in (online, stored):
        hidden.grad = None
        total, ce, value = distill_losses(hidden, targets, head, kd, side, 0.4, chunk=CHUNK, ignore_index=PAD)
        total.backward()
        assert float(ce) == pytest.approx(ce64, rel=1e-6) and float(value) == pytest.approx(kd64, rel=1e-5)
        assert torch.allclose(hidden.grad.double(), grad64, rtol=1e-4, atol=1e-8)
        assert (hidden.grad[targets == PAD] == 0).all()


def _distillation(teacher, loss: str = "forward_kl"):
    from miniplm.config import KDConfig
    from miniplm.training.distill import Distillation

    return Distillation(KDConfig(loss=loss, weight=0.4, temperature=1.5), VOCAB, "cpu", teacher)


@pytest.mark.parametrize("wider", ["student", "teacher", "both"])
def test_an_output_layer_wider_than_the_tokenizer_on_either_side(tiny_models, models, wider):
    """A student pruned from Qwen keeps a head of 151,936 rows for 151,646 tokens; a teacher may be
    padded the same way. Both models are compared over the tokenizer's tokens."""
    from miniplm.models.linear_ce import Head

    student, _, ids = models
    teacher = Teacher(tiny_models["teacher"], VOCAB, "float32", "cpu")
    with torch.no_grad():
        teacher.model.get_output_embeddings().weight.mul_(8.0)
    if wider in ("teacher", "both"):
        teacher.model.resize_token_embeddings(VOCAB + 11)
        teacher = _reheaded(teacher)
    student_head = head_of(student)
    if wider in ("student", "both"):
        extra = torch.randn(5, 32)  # rows no token maps to: they must change nothing
        student_head = Head(torch.cat([student_head.weight.detach(), extra]).requires_grad_(), None)
    rows = ids
    ce64, kd64, grad64 = _masked_reference64(student, teacher.model, rows, VOCAB, "forward_kl", 1.5, 0.4)
    hidden = student.base_model(input_ids=rows[:, :-1]).last_hidden_state.reshape(-1, 32)
    hidden = hidden.detach().requires_grad_()
    total, ce, value = _distillation(teacher).losses(hidden, rows, np.arange(2), student_head)
    total.backward()
    assert float(ce) == pytest.approx(ce64, rel=1e-6) and float(value) == pytest.approx(kd64, rel=1e-5)
    assert torch.allclose(hidden.grad.double(), grad64, rtol=1e-4, atol=1e-8)
    if wider in ("student", "both"):
        assert student_head.weight.grad[VOCAB:].abs().sum() == 0


def _reheaded(teacher: Teacher) -> Teacher:
    """The teacher again, its head re-read after a resize (its first VOCAB rows unchanged)."""
    teacher.head = head_of(teacher.model)
    assert teacher.model.get_output_embeddings().weight.shape[0] > VOCAB
    return teacher


def test_liger_fused_loss_on_padded_rows_and_a_wider_student_head(models):
    """The fused path on CUDA compares the same outcomes and skips the same positions as the chunked one."""
    pytest.importorskip("liger_kernel.chunked_loss")
    from miniplm.corpus.instance_rows import PAD
    from miniplm.models.linear_ce import Head
    from miniplm.training.kd_losses import liger_applies, liger_distill_losses

    student, teacher, ids = models
    rows = _padded(ids)
    hidden = student.base_model(input_ids=rows[:, :-1].clamp(min=0)).last_hidden_state.reshape(-1, 32)
    hidden = hidden.detach().requires_grad_()
    targets = rows[:, 1:].reshape(-1)
    head = Head(torch.cat([student.get_output_embeddings().weight.detach(), torch.randn(5, 32)]), None).first(VOCAB)
    online, kd = teacher.side(rows[:, :-1]), KDLoss("forward_kl", 1.5)
    assert liger_applies(kd, head, online)
    ours = distill_losses(hidden, targets, head, kd, online, 0.4, chunk=CHUNK, ignore_index=PAD)
    ours[0].backward()
    our_grad, hidden.grad = hidden.grad.clone(), None
    fused = liger_distill_losses(hidden, targets, head, kd, online, 0.4, compiled=False, ignore_index=PAD)
    fused[0].backward()
    for a, b in zip(fused, ours):
        assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-5)
    assert torch.allclose(hidden.grad, our_grad, rtol=1e-4, atol=1e-8)

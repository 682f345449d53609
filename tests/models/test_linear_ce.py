"""The vocabulary projection without full logits: values and gradients against the plain computation."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from miniplm.models import linear_ce
from miniplm.models.kernels import linear_ce_kernel
from miniplm.models.linear_ce import Head, head_of, mean_nll, token_logprobs
from miniplm.training.objective import NextTokenLoss, lm_state_dict


def _full(hidden, weight, bias, scale, softcap):
    logits = hidden @ weight.t() + (bias if bias is not None else 0)
    logits = logits * scale
    return torch.tanh(logits / softcap) * softcap if softcap else logits


@pytest.mark.parametrize("bias, scale, softcap", [(False, 1.0, None), (True, 0.5, 3.0)])
def test_chunks_equal_the_full_float64_computation(monkeypatch, bias, scale, softcap):
    monkeypatch.setattr(linear_ce, "LOGITS_BYTES", 7 * 50 * 4)  # 7 rows a chunk: 23 rows take 4 chunks
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(23, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(50, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(50, dtype=torch.float64, generator=gen, requires_grad=True) if bias else None
    y = torch.randint(0, 50, (23,), generator=gen)
    params = [h, w] + ([b] if bias else [])

    logits = _full(h, w, b, scale, softcap)
    expected = torch.nn.functional.cross_entropy(logits, y)
    expected_grads = torch.autograd.grad(expected * 1.7, params)
    loss = mean_nll(h, y, Head(w, b, scale, softcap))
    grads = torch.autograd.grad(loss * 1.7, params)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    per_token = token_logprobs(h.detach(), y, Head(w.detach(), None if b is None else b.detach(), scale, softcap))
    torch.testing.assert_close(per_token, torch.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1).detach())


def test_ignored_targets_are_left_out_of_the_mean_and_its_gradients(monkeypatch):
    """PAD targets (padded instance rows, a held-out batch's filler rows) predict nothing."""
    monkeypatch.setattr(linear_ce, "LOGITS_BYTES", 7 * 50 * 4)
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(23, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(50, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randint(0, 50, (23,), generator=gen)
    y[[0, 5, 6, 22]] = -1
    expected = torch.nn.functional.cross_entropy(h @ w.t(), y, ignore_index=-1)
    loss = mean_nll(h, y, Head(w, None), ignore_index=-1)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(loss, [h, w]), torch.autograd.grad(expected, [h, w])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # nothing to predict: a loss of 0 (a filler batch adds nothing to a sum), not NaN
    assert mean_nll(h, torch.full_like(y, -1), Head(w, None), ignore_index=-1).item() == 0.0


def test_the_training_objective_is_the_models_own_loss(tiny_models):
    """NextTokenLoss (the body, then the chunked loss) gives the loss of the model's full logits, and
    the same gradients."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["reference"], dtype=torch.float64)
    rows = torch.randint(3, 300, (3, 17), generator=torch.Generator().manual_seed(1))
    loss = NextTokenLoss(model)(rows)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits = model(input_ids=rows[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    assert set(lm_state_dict(NextTokenLoss(model).state_dict())) == set(model.state_dict())


def test_the_cpu_takes_the_torch_path_and_a_job_can_ask_for_it(tiny_models):
    assert linear_ce_kernel("cpu") == "torch"
    assert linear_ce_kernel("cuda:0", "torch") == "torch"
    assert linear_ce_kernel("cuda:0", weight_in_backward=False) != "cce"  # ZeRO-3 frees the weight after forward
    head = head_of(AutoModelForCausalLM.from_pretrained(tiny_models["teacher"]))
    assert head.bias is None and head.scale == 1.0 and head.softcap is None

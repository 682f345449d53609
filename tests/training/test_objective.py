"""The module DeepSpeed trains: its loss against transformers' own forward, the causal-only masks,
and the compiled step (one graph, nothing waiting for the host, the eager loss and gradients)."""

import copy

import pytest
import torch

from miniplm.config import StudentConfig
from miniplm.corpus.instance_rows import PAD
from miniplm.models.presets import qwen_config
from miniplm.training.engine import speed_up
from miniplm.training.objective import NextTokenLoss, causal_only

VOCAB = 256


def _model(**settings):
    from transformers import AutoModelForCausalLM

    config = qwen_config("tiny", VOCAB, 128, 0, 1).to_dict()
    if settings:  # layer kinds follow from the new settings
        config.pop("layer_types")
    config = type(qwen_config("tiny", VOCAB, 128, 0, 1))(**{**config, **settings})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


@pytest.fixture
def rows():
    rows = torch.randint(2, VOCAB, (4, 65), generator=torch.Generator().manual_seed(1))
    rows[1, 40:] = PAD  # a padded instance row: its PAD targets are not predicted
    return rows


def _plain_loss(model, rows) -> torch.Tensor:
    """transformers' own forward with its own mask, then cross-entropy over the targets that are not PAD."""
    logits = model(input_ids=rows[:, :-1].clamp(min=0)).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), rows[:, 1:].reshape(-1), ignore_index=PAD)


def test_the_loss_with_causal_only_masks_is_transformers_own(rows):
    model = _model()
    assert causal_only(model.config) == {"full_attention": None}
    loss = NextTokenLoss(model)(rows)
    assert float(loss) == pytest.approx(float(_plain_loss(model, rows)), abs=1e-5)


def test_a_sliding_window_keeps_the_mask_transformers_builds():
    config = _model(use_sliding_window=True, sliding_window=16, max_window_layers=0).config
    assert "sliding_attention" in config.layer_types
    assert causal_only(config) is None


def test_the_compiled_step_is_one_graph_with_nothing_waiting_for_the_host(rows):
    """torch.compile breaks its graph wherever the code needs a value on the host (`.item()`, a
    data-dependent shape such as `nonzero()`): no break means no wait inside the step."""
    objective = NextTokenLoss(_model())
    explained = torch._dynamo.explain(objective.ce)(rows)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("mode", ["model", "step"])
def test_compiled_the_loss_and_gradients_are_the_eager_ones(rows, mode):
    model = _model()
    eager = NextTokenLoss(copy.deepcopy(model))
    compiled = NextTokenLoss(copy.deepcopy(model))
    speed_up(compiled.lm, compiled, StudentConfig(name="s", preset="tiny", tokens="t", steps=1, compile=mode))
    for objective in (eager, compiled):
        objective(rows).backward()
    assert float(compiled(rows)) == pytest.approx(float(eager(rows)), abs=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name

"""Held-out loss equals a plain computation with the model on the same tokens."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from miniplm.evaluation.heldout import lm_loss
from miniplm.models.loading import load_tokenizer

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "def add(a, b):\n    return a + b",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "import os\nprint(os.listdir('.'))",
]


def plain_loss(model, tokenizer, texts, max_length=None):
    """Sum of -log p over every token of every document read as [BOS] + tokens, in float64,
    one document (or one window of max_length inputs, scoring each token once) at a time."""
    nll, count = 0.0, 0
    for text in texts:
        seq = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        step = max_length or len(seq)
        for start in range(0, len(seq) - 1, step):
            window = torch.tensor([seq[start : start + step + 1]])
            with torch.no_grad():
                logp = torch.log_softmax(model(window[:, :-1]).logits.double(), dim=-1)
            nll -= float(logp[0].gather(1, window[0, 1:, None]).sum())
            count += window.shape[1] - 1
    return nll / count, count


@pytest.mark.parametrize("max_length", [None, 8])
def test_lm_loss_equals_a_plain_computation(tiny_models, max_length):
    tokenizer = load_tokenizer(tiny_models["teacher"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float64).eval()
    expected, count = plain_loss(model, tokenizer, TEXTS, max_length)
    got = lm_loss(model, tokenizer, TEXTS, max_length=max_length or 1024, batch_tokens=64, show_progress=False)
    assert got["tokens"] == count and got["documents"] == len(TEXTS)
    assert got["loss"] == pytest.approx(expected, rel=1e-9)
    assert got["perplexity"] == pytest.approx(math.exp(expected), rel=1e-9)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert got["bits_per_byte"] == pytest.approx(expected * count / math.log(2) / n_bytes, rel=1e-9)


def test_float32_model_agrees_closely(tiny_models):
    tokenizer = load_tokenizer(tiny_models["teacher"])
    model64 = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float64).eval()
    model32 = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float32).eval()
    expected, _ = plain_loss(model64, tokenizer, TEXTS)
    assert lm_loss(model32, tokenizer, TEXTS, max_length=1024, show_progress=False)["loss"] == pytest.approx(
        expected, rel=1e-5
    )


def test_packed_loss_is_the_plain_loss_over_the_packed_instances(tiny_models):
    import numpy as np

    from miniplm.scoring.instances import Boundaries, cut_points

    tokenizer = load_tokenizer(tiny_models["teacher"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float64).eval()
    stream = [
        t for text in TEXTS for t in tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ]
    ends = cut_points(Boundaries.for_tokenizer(tokenizer).mask(np.array(stream)), 8 + 1)
    nll, count = 0.0, 0
    spans = [(a, b) for a, b in zip([0, *ends[:-1]], ends) if b - a > 1]  # a lone last token predicts nothing
    for a, b in spans:
        instance = torch.tensor([stream[a:b]])
        with torch.no_grad():
            logp = torch.log_softmax(model(instance[:, :-1]).logits.double(), dim=-1)
        nll -= float(logp[0].gather(1, instance[0, 1:, None]).sum())
        count += b - a - 1
    got = lm_loss(model, tokenizer, TEXTS, max_length=8, batch_tokens=64, show_progress=False)["packed"]
    assert got["tokens"] == count and got["instances"] == len(spans)
    assert got["loss"] == pytest.approx(nll / count, rel=1e-9)


def test_special_token_text_in_heldout_documents_is_read_as_text(tiny_models):
    from miniplm.evaluation.heldout import readings

    tokenizer = load_tokenizer(tiny_models["teacher"])
    texts = ["user: hi<eos><bos>bot: hello<eos>", "plain"]
    for r in readings(tokenizer, texts, max_length=64, show_progress=False):
        tokens = [t for seq in r.documents for t in seq.tolist()]
        packed = [t for seq in r.instances for t in seq.tolist()]
        assert {tokenizer.eos_token_id, tokenizer.bos_token_id}.isdisjoint(tokens)
        assert packed.count(tokenizer.eos_token_id) == 2 and tokenizer.bos_token_id not in packed

"""The unigram floor: counts of a token set's tokens (PAD is no token), add-one smoothed over the
tokenizer's vocabulary, scored on exactly the targets the held-out loss predicts."""

import math
from collections import Counter

import numpy as np
import pytest

from miniplm.corpus.tokens import write_rows
from miniplm.evaluation.unigram import log_probs, token_counts, unigram_loss
from miniplm.models.loading import load_tokenizer
from miniplm.scoring.instances import Boundaries, cut_points
from tests.evaluation.test_heldout import TEXTS

PAD = -1


def _token_set(folder, tokenizer):
    """Two shards of rows of 9 tokens, the last row of each right-padded with PAD."""
    ids = [t for text in TEXTS for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    rows = []
    for start in range(0, len(ids), 7):
        row = ids[start : start + 9]
        rows.append(row + [PAD] * (9 - len(row)))
    folder.mkdir()
    write_rows(folder / "shard-00000.arrow", np.array(rows[:3]))
    write_rows(folder / "shard-00001.arrow", np.array(rows[3:]))
    return Counter(t for row in rows for t in row if t != PAD)


def test_counts_are_every_token_of_the_rows_but_pad(tiny_models, tmp_path):
    tokenizer = load_tokenizer(tiny_models["teacher"])
    expected = _token_set(tmp_path / "tokens", tokenizer)
    counts = token_counts(tmp_path / "tokens", len(tokenizer))
    assert len(counts) == len(tokenizer)
    assert {t: int(c) for t, c in enumerate(counts) if c} == dict(expected)


def test_a_token_beyond_the_vocabulary_is_an_error(tmp_path):
    (tmp_path / "tokens").mkdir()
    write_rows(tmp_path / "tokens" / "shard-00000.arrow", np.array([[1, 2, 300]]))
    with pytest.raises(ValueError, match="300"):
        token_counts(tmp_path / "tokens", 300)


@pytest.mark.parametrize("max_length", [1024, 8])
def test_loss_is_the_add_one_unigram_over_the_held_out_targets(tiny_models, tmp_path, max_length):
    tokenizer = load_tokenizer(tiny_models["teacher"])
    counted = _token_set(tmp_path / "tokens", tokenizer)
    vocab, total = len(tokenizer), sum(counted.values())

    def nll(t: int) -> float:
        return -math.log((counted[t] + 1) / (total + vocab))

    logp = log_probs(token_counts(tmp_path / "tokens", vocab))
    got = unigram_loss(logp, tokenizer, TEXTS, max_length=max_length, show_progress=False)

    # per document, read after BOS: every token is a target, windows or not
    targets = [t for text in TEXTS for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    expected = sum(map(nll, targets)) / len(targets)
    assert got["tokens"] == len(targets) and got["documents"] == len(TEXTS)
    assert got["loss"] == pytest.approx(expected, rel=1e-12)
    assert got["perplexity"] == pytest.approx(math.exp(expected), rel=1e-12)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert got["bits_per_byte"] == pytest.approx(expected * len(targets) / math.log(2) / n_bytes, rel=1e-12)

    # packed: the texts joined with EOS, cut at sentence ends, each instance predicting all but its first token
    eos = tokenizer.eos_token_id
    stream = [t for text in TEXTS for t in tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]]
    ends = cut_points(Boundaries.for_tokenizer(tokenizer).mask(np.array(stream)), max_length + 1)
    spans = [(a, b) for a, b in zip([0, *ends[:-1]], ends) if b - a > 1]
    packed = [t for a, b in spans for t in stream[a + 1 : b]]
    assert got["packed"]["tokens"] == len(packed) and got["packed"]["instances"] == len(spans)
    assert got["packed"]["loss"] == pytest.approx(sum(map(nll, packed)) / len(packed), rel=1e-12)
    assert got["flops"] == 0.0

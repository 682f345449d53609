import numpy as np
import polars as pl
import pytest

from miniplm.proxy.agreement import held_out_budget, kept_overlap, rank_agreement
from miniplm.schema.select import SelectConfig


def frame(lm_difference, proxy_difference, n=4) -> pl.DataFrame:
    """Units with teacher -1 per token, and the differences given (LM and proxy)."""
    k = len(lm_difference)
    lm, px = np.asarray(lm_difference, float), np.asarray(proxy_difference, float)
    return pl.DataFrame(
        {
            "id": [f"u{i:03d}" for i in range(k)],
            "source": ["s"] * k,
            "n_tokens": [n] * k,
            "teacher_logprob": [-1.0 * n] * k,
            "reference_logprob": (-1.0 - lm) * n,
            "proxy_teacher_logprob": [-1.0 * n] * k,
            "proxy_reference_logprob": (-1.0 - px) * n,
        }
    )


def test_rank_agreement_is_spearman_of_the_per_token_scores():
    rng = np.random.default_rng(0)
    lm = rng.normal(size=50)
    proxy = lm + rng.normal(scale=0.8, size=50)
    got = rank_agreement(frame(lm, proxy))
    # Spearman without ties: Pearson's r of the ranks, computed apart
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    expected = np.corrcoef(ranks(lm), ranks(proxy))[0, 1]
    assert got["spearman_difference"] == pytest.approx(expected)
    assert np.isnan(got["spearman_teacher"])  # every teacher score equal: no ranking to agree on


def test_kept_overlap_is_the_share_of_the_lm_selection_the_proxy_keeps_too():
    cfg = SelectConfig(keep_fraction=0.5, min_teacher_logprob=None)
    lm = np.arange(20.0)
    same = kept_overlap(frame(lm, lm * 2), cfg, 0)
    assert same == {"kept_lm": 10, "kept_proxy": 10, "kept_overlap": 1.0}
    assert kept_overlap(frame(lm, -lm), cfg, 0)["kept_overlap"] == 0.0
    shifted = np.r_[lm[:15], lm[15:] - 100]  # the proxy ranks the top 5 last
    assert kept_overlap(frame(lm, shifted), cfg, 0)["kept_overlap"] == 0.5


def test_a_token_budget_becomes_the_corpus_share_on_the_held_out_units():
    cfg = SelectConfig(keep_tokens=250)
    share = held_out_budget(cfg, 1000)
    assert share.keep_token_fraction == 0.25 and share.keep_tokens is None and share.keep_fraction is None
    assert held_out_budget(SelectConfig(keep_fraction=0.3), 1000).keep_fraction == 0.3


def test_a_budget_no_held_out_unit_fits_is_said_in_words_not_as_nan():
    from miniplm.proxy.summary import overlap_words

    cfg = SelectConfig(keep_token_fraction=0.01, min_teacher_logprob=None)
    result = kept_overlap(frame(np.arange(10.0), np.arange(10.0)), cfg, 0)
    assert result["kept_lm"] == 0
    words = overlap_words({**result, "held_out_budget": "1.0% of the tokens"})
    assert "keeps no unit from LM scores" in words and "nan" not in words

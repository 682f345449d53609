import polars as pl
import pytest

from miniplm.config import SelectConfig
from miniplm.selection.strategies import decide
from miniplm.selection.tally import counts, tally


def scores_table():
    # id: (source, n_tokens, teacher per token, reference per token)
    rows = {
        "a": ("web", 10, -1.0, -4.0),  # difference 3.0
        "b": ("web", 20, -2.0, -4.0),  # 2.0
        "c": ("books", 10, -1.0, -2.0),  # 1.0
        "d": ("books", 40, -3.0, -3.5),  # 0.5
        "e": ("web", 10, -2.0, -2.0),  # 0.0
        "f": ("code", 10, -6.0, -5.0),  # -1.0 (noise: teacher finds it hard)
        "g": ("code", 30, -1.5, -3.5),  # 2.0, ties with b: id breaks it
        "h": ("web", 2, -0.5, -5.0),  # 4.5 but only 2 tokens
    }
    return pl.DataFrame(
        [
            {"id": k, "source": s, "n_tokens": n, "teacher_logprob": t * n, "reference_logprob": r * n}
            for k, (s, n, t, r) in rows.items()
        ]
    )


def kept(cfg: SelectConfig, seed=0) -> list[str]:
    d = decide(scores_table(), cfg, seed)
    c = counts(tally(d))
    assert c["scored"] == 8 == c["kept"] + sum(c["dropped"].values())
    return sorted(d.filter(pl.col("kept"))["id"])


def test_difference_top_fraction_with_ties_broken_by_id():
    assert kept(SelectConfig(keep_fraction=0.5)) == ["a", "b", "g", "h"]
    assert kept(SelectConfig(keep_fraction=0.25)) == ["a", "h"]
    assert kept(SelectConfig(keep_fraction=0.375)) == ["a", "b", "h"]  # b before g: same score, smaller id
    assert kept(SelectConfig(keep_fraction=1.0)) == list("abcdefgh")


def test_token_budget_keeps_whatever_still_fits_in_rank_order():
    # ranking h(2) a(10) b(20) g(30) c(10) d(40) e(10) f(10)
    assert kept(SelectConfig(keep_tokens=32)) == ["a", "b", "h"]
    assert kept(SelectConfig(keep_tokens=62)) == ["a", "b", "g", "h"]
    # g (30) does not fit in the 29 left after h, a, b: c and e fill the budget (d and f do not fit)
    assert kept(SelectConfig(keep_tokens=61)) == ["a", "b", "c", "e", "h"]
    assert kept(SelectConfig(keep_tokens=1)) == []
    # a fraction of the 132 scored tokens: 0.25 -> 33 (h a b, then nothing of 10 or less fits in 1)
    assert kept(SelectConfig(keep_token_fraction=0.25)) == ["a", "b", "h"]
    assert kept(SelectConfig(keep_token_fraction=0.5)) == ["a", "b", "g", "h"]  # 66: 62, and no 4-token unit left


def test_noise_filter_and_counts_by_reason():
    cfg = SelectConfig(keep_fraction=0.5, min_tokens=5, min_teacher_logprob=-5.0)
    d = decide(scores_table(), cfg, 0)
    assert sorted(d.filter(pl.col("kept"))["id"]) == ["a", "b", "c", "g"]
    reasons = dict(d.filter(~pl.col("kept")).select("id", "reason").iter_rows())
    assert reasons == {"h": "too_few_tokens", "f": "low_teacher_logprob", "d": "below_cut", "e": "below_cut"}
    assert counts(tally(d)) == {
        "scored": 8,
        "kept": 4,
        "tokens_scored": 132,
        "tokens_kept": 70,
        "kept_fraction": {"units": 0.5, "tokens": 70 / 132},
        "dropped": {
            "non_finite_score": 0,
            "too_few_tokens": 1,
            "low_teacher_logprob": 1,
            "source_cap": 0,
            "below_cut": 2,
        },
    }
    assert d.filter(pl.col("id") == "a")["score"][0] == pytest.approx(3.0)


def test_source_cap():
    # budget 4 documents, no source above half of it: web has h, a, b ranked first
    d = decide(scores_table(), SelectConfig(keep_fraction=0.5, max_source_fraction=0.5), 0)
    assert sorted(d.filter(pl.col("kept"))["id"]) == ["a", "c", "g", "h"]
    assert dict(d.filter(pl.col("reason") == "source_cap").select("id", "source").iter_rows()) == {
        "b": "web",
        "e": "web",
    }


def test_other_strategies():
    assert kept(SelectConfig(strategy="teacher", keep_fraction=0.25)) == ["a", "h"]  # -0.5, -1.0, -1.0 (c loses on id)
    assert kept(SelectConfig(strategy="perplexity", perplexity_band="low", keep_fraction=0.25)) == ["c", "e"]
    assert kept(SelectConfig(strategy="perplexity", perplexity_band="high", keep_fraction=0.25)) == ["f", "h"]
    # losses: a4 b4 c2 d3.5 e2 f5 g3.5 h5 -> middle band is d, g (3.5) and a, b (4)
    assert kept(SelectConfig(strategy="perplexity", perplexity_band="middle", keep_fraction=0.5)) == [
        "a",
        "b",
        "d",
        "g",
    ]


def test_random_and_sampled_are_seeded_and_order_free():
    table = scores_table()
    for strategy in ("random", "difference-sample"):
        cfg = SelectConfig(strategy=strategy, keep_fraction=0.5)
        first = sorted(decide(table, cfg, 7).filter(pl.col("kept"))["id"])
        shuffled = sorted(decide(table.sample(fraction=1.0, shuffle=True, seed=3), cfg, 7).filter(pl.col("kept"))["id"])
        assert first == shuffled and len(first) == 4
        others = {tuple(sorted(decide(table, cfg, s).filter(pl.col("kept"))["id"])) for s in range(10)}
        assert len(others) > 1
    # a cold temperature makes sampling the deterministic top-k
    cold = SelectConfig(strategy="difference-sample", keep_fraction=0.5, temperature=1e-6)
    assert sorted(decide(table, cold, 5).filter(pl.col("kept"))["id"]) == ["a", "b", "g", "h"]


def test_both_budgets_is_a_config_error():
    with pytest.raises(ValueError, match="give one budget"):
        SelectConfig(keep_fraction=0.3, keep_tokens=100)
    with pytest.raises(ValueError, match="give one budget"):
        SelectConfig(keep_tokens=100, keep_token_fraction=0.5)
    assert SelectConfig(keep_fraction=None, keep_token_fraction=0.5).keep_token_fraction == 0.5
    with pytest.raises(ValueError, match="give a budget"):
        SelectConfig(keep_fraction=None)


def test_random_and_sampled_selections_are_exactly_the_documented_draws():
    import numpy as np

    from miniplm.draws import uniform_by_id

    table = scores_table()
    ids = sorted(table["id"])
    u = dict(zip(ids, uniform_by_id(pl.Series(ids), 11)))  # each id's own draw (tests/selection/test_draws.py)
    top4 = lambda key: sorted(sorted(ids, key=lambda i: (-key[i], i))[:4])  # noqa: E731
    assert kept(SelectConfig(strategy="random", keep_fraction=0.5), seed=11) == top4(u)
    score = {
        r["id"]: (r["teacher_logprob"] - r["reference_logprob"]) / r["n_tokens"] for r in table.iter_rows(named=True)
    }
    gumbel = {i: score[i] / 2.0 - np.log(-np.log(u[i])) for i in ids}
    assert kept(SelectConfig(strategy="difference-sample", temperature=2.0, keep_fraction=0.5), seed=11) == top4(gumbel)


def test_non_finite_scores_are_dropped_not_ranked_first():
    table = scores_table().with_columns(
        teacher_logprob=pl.when(pl.col("id") == "e").then(float("nan")).otherwise(pl.col("teacher_logprob")),
        reference_logprob=pl.when(pl.col("id") == "c")
        .then(float("-inf"))
        .when(pl.col("id") == "d")
        .then(None)
        .otherwise(pl.col("reference_logprob")),
    )
    d = decide(table, SelectConfig(keep_fraction=0.5), 0)
    assert sorted(d.filter(pl.col("kept"))["id"]) == ["a", "b", "g", "h"]
    assert sorted(d.filter(pl.col("reason") == "non_finite_score")["id"]) == ["c", "d", "e"]


def test_equal_differences_tie_exactly_and_fall_to_the_id():
    # (t - r) / n is 1/3 for all three, though t/n - r/n would round differently
    table = pl.DataFrame(
        {
            "id": ["d11", "d5", "d7"],
            "source": ["s"] * 3,
            "n_tokens": [3, 6, 9],
            "teacher_logprob": [-1.0, -2.0, -3.0],
            "reference_logprob": [-2.0, -4.0, -6.0],
        }
    )
    d = decide(table, SelectConfig(keep_fraction=0.34), 0)
    assert d.filter(pl.col("kept"))["id"].to_list() == ["d11"]  # ids compare as strings


def test_source_cap_allowance_is_not_lost_to_rounding():
    table = pl.DataFrame(
        {
            "id": [f"x{i:03d}" for i in range(200)],
            "source": ["a", "b"] * 100,
            "n_tokens": [10] * 200,
            "teacher_logprob": [-float(i) for i in range(200)],
            "reference_logprob": [-300.0] * 200,
        }
    )
    d = decide(table, SelectConfig(keep_fraction=0.5, max_source_fraction=0.29), 0)
    assert dict(d.filter(pl.col("kept")).group_by("source").len().iter_rows()) == {"a": 29, "b": 29}


def test_random_baseline_matches_the_kept_token_budget_from_all_documents():
    from miniplm.selection.strategies import random_baseline

    table = pl.DataFrame(
        {
            "id": [f"d{i:03d}" for i in range(200)],
            "source": ["s"] * 200,
            "n_tokens": [8] * 200,
            "doc_tokens": [10 + (i * 37) % 90 for i in range(200)],
            "teacher_logprob": [-1.0 * i for i in range(200)],
            "reference_logprob": [-2.0] * 200,
        }
    )
    decisions = decide(table, SelectConfig(keep_fraction=0.3), 0)
    budget = decisions.filter(pl.col("kept"))["doc_tokens"].sum()
    chosen = random_baseline(table, decisions, 0)
    spent = table.filter(chosen)["doc_tokens"].sum()
    assert budget - 99 < spent <= budget  # whole documents (at most 99 tokens each) up to the budget
    # random, not the strategy's choice: it reaches documents the strategy dropped
    assert (chosen & ~decisions["kept"]).sum() > 10
    assert random_baseline(table, decisions, 0).to_list() == chosen.to_list()
    assert random_baseline(table.reverse(), decisions.reverse(), 0).reverse().to_list() == chosen.to_list()
    # where only prefixes were scored, the budgets count whole documents
    assert counts(tally(decisions))["doc_tokens_kept"] == budget

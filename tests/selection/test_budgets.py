"""Token budgets on skewed lengths: exact to one unit, the kept set the plain greedy walk down the
ranking, for documents (lognormal lengths, longer ones scoring higher) and instances (full rows and
short tails), and the random baseline held to the same budget."""

import math

import numpy as np
import polars as pl
import pytest

from miniplm.config import SelectConfig
from miniplm.draws import uniform_by_id
from miniplm.schema.select import RANDOM_CONTROLS
from miniplm.selection.strategies import control_seed, decide, fill, random_baseline
from miniplm.selection.tally import counts, tally


def skewed_scores(n: int, lengths: np.ndarray, rng: np.random.Generator) -> pl.DataFrame:
    """Scores whose difference rises mildly with length, as on web text."""
    score = 0.3 * np.log(lengths) + rng.normal(0, 0.5, n)
    teacher = -rng.gamma(4.0, 0.6, n) * lengths
    return pl.DataFrame(
        {
            "id": [f"u{i:05d}" for i in range(n)],
            "source": rng.choice(["web", "code"], n).tolist(),
            "n_tokens": lengths,
            "teacher_logprob": teacher,
            "reference_logprob": teacher - score * lengths,
        }
    )


def greedy(table: pl.DataFrame, budget: int) -> set[str]:
    """The budget walked down the ranking one unit at a time, keeping each unit that fits."""
    ranked = sorted(
        table.iter_rows(named=True),
        key=lambda r: (-((r["teacher_logprob"] - r["reference_logprob"]) / r["n_tokens"]), r["id"]),
    )
    kept, left = set(), budget
    for r in ranked:
        if r["n_tokens"] <= left:
            kept.add(r["id"])
            left -= r["n_tokens"]
    return kept


def documents(rng):
    lengths = np.clip(rng.lognormal(np.log(400), 1.5, 3000), 1, 200_000).astype(np.int64)
    lengths[rng.integers(0, 3000, 3)] = 150_000  # a few huge documents, ranked high by the length correlation
    return skewed_scores(3000, lengths, rng)


def instances(rng):
    lengths = np.full(2000, 1024, dtype=np.int64)
    tails = rng.random(2000) < 0.15  # cut at a sentence end, or a source's last instance
    lengths[tails] = rng.integers(2, 1024, int(tails.sum()))
    return skewed_scores(2000, lengths, rng)


@pytest.mark.parametrize("make", [documents, instances])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_token_fraction_is_spent_to_within_one_unit(make, fraction):
    table = make(np.random.default_rng(7))
    total = int(table["n_tokens"].sum())
    budget = math.floor(fraction * total + 0.5)
    d = decide(table, SelectConfig(keep_fraction=None, keep_token_fraction=fraction, min_teacher_logprob=None), 0)
    chosen = d.filter(pl.col("kept"))
    assert set(chosen["id"]) == greedy(table, budget)
    spent = int(chosen["n_tokens"].sum())
    passed_over = d.filter(~pl.col("kept"))["n_tokens"]
    assert spent <= budget and budget - spent < passed_over.min()  # nothing passed over fits in what is left
    assert counts(tally(d))["kept_fraction"]["tokens"] == pytest.approx(spent / total)
    assert abs(spent / total - fraction) < passed_over.min() / total


def test_a_fraction_of_documents_is_not_a_fraction_of_tokens():
    table = documents(np.random.default_rng(7))
    by_units = counts(tally(decide(table, SelectConfig(keep_fraction=0.5), 0)))["kept_fraction"]
    by_tokens = counts(tally(decide(table, SelectConfig(keep_fraction=None, keep_token_fraction=0.5), 0)))[
        "kept_fraction"
    ]
    assert by_units["units"] == 0.5 and abs(by_units["tokens"] - 0.5) > 0.1  # longer documents score higher
    assert by_tokens["tokens"] == pytest.approx(0.5, abs=1e-3) and by_tokens["units"] < 0.5


def test_one_huge_document_does_not_leave_the_budget_unspent():
    table = pl.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "source": ["s"] * 4,
            "n_tokens": [50, 1000, 30, 20],
            "teacher_logprob": [-50.0, -1000.0, -30.0, -20.0],
            "reference_logprob": [-250.0, -4000.0, -60.0, -30.0],
        }
    )  # ranking b a c d
    d = decide(table, SelectConfig(keep_tokens=100), 0)
    assert sorted(d.filter(pl.col("kept"))["id"]) == ["a", "c", "d"]
    assert d.filter(pl.col("id") == "b")["reason"][0] == "below_cut"


@pytest.mark.parametrize("make", [documents, instances])
def test_random_baseline_is_held_to_the_kept_tokens(make):
    table = make(np.random.default_rng(3))
    d = decide(table, SelectConfig(keep_fraction=None, keep_token_fraction=0.3), 0)
    budget = int(d.filter(pl.col("kept"))["n_tokens"].sum())
    chosen = random_baseline(table, d, 0)
    spent = int(table.filter(chosen)["n_tokens"].sum())
    # the smallest draws are kept while they fit: the next draw, the first left out, would not
    draws = uniform_by_id(table["id"], control_seed(0, RANDOM_CONTROLS[0]))
    drawn = table.with_columns(u=draws, chosen=chosen).sort("u", "id")
    cut = drawn["chosen"].arg_min()
    assert drawn["chosen"][:cut].all() and not drawn["chosen"][cut:].any()
    assert spent <= budget < spent + drawn["n_tokens"][cut]


def test_fill_worst_case_terminates_and_is_exact():
    rng = np.random.default_rng(0)
    cost = np.where(np.arange(20000) % 2 == 0, 1, rng.integers(900, 1000, 20000))  # tiny and too-big alternate
    keep = fill(cost, 950)
    left = 950 - int(cost[keep].sum())
    assert left >= 0 and (left < cost[~keep]).all()

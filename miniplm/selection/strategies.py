"""Deciding what to keep, from scores alone (never the text).

`decide` takes one row per scored document and returns the same rows with a
difference score, a ranking key, `kept`, and for every dropped document the
reason, applied in this order: non_finite_score (a NaN or infinite log-prob
from a broken model or document), too_few_tokens, low_teacher_logprob (the
noise floor, selection/noise_floor.py), source_cap, below_cut. So scored = kept + the sum of the reasons.

Every strategy ranks by a key (higher is better) with ties broken by id, and
walks that ranking keeping what fits the budget: a fraction of the units
(`keep_fraction`: the top of the ranking), a number of tokens (`keep_tokens`)
or a fraction of the scored tokens (`keep_token_fraction`, the paper's alpha).
A token budget keeps every unit that still fits when its turn comes, so one
huge document passes its turn to the next ones that fit and the budget is
spent to within one unit: exact and deterministic. Random draws are a seeded hash of each unit's id
(miniplm/draws.py), so they depend on nothing else: not on the other units, nor on how shards
were split among workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl

from miniplm.draws import uniform_by_id
from miniplm.schema.select import RANDOM_CONTROLS, RandomControl, SelectConfig
from miniplm.selection.noise_floor import noise_floor

REASONS = ("non_finite_score", "too_few_tokens", "low_teacher_logprob", "source_cap", "below_cut")


def length_column(table: pl.DataFrame) -> str:
    """The tokens a document will train on: all of them (doc_tokens), even where score saw only a prefix."""
    return "doc_tokens" if "doc_tokens" in table.columns else "n_tokens"


def keys_per_unit(cfg: SelectConfig) -> bool:
    """Whether the strategy's ranking key is a function of each unit alone (and the seed); perplexity's
    middle band ranks by a percentile of the whole pool instead."""
    return not (cfg.strategy == "perplexity" and cfg.perplexity_band == "middle")


def needs_ids(cfg: SelectConfig) -> bool:
    return cfg.strategy in ("random", "difference-sample")


def unit_key(
    cfg: SelectConfig, seed: int, ids: pl.Series | None, score: np.ndarray, teacher: np.ndarray, loss: np.ndarray
) -> np.ndarray:
    """The ranking key (higher is better) of units still in the running."""
    if cfg.strategy == "difference":
        return score
    if cfg.strategy == "difference-sample":
        return score / cfg.temperature - np.log(-np.log(uniform_by_id(ids, seed)))
    if cfg.strategy == "random":
        return uniform_by_id(ids, seed)
    if cfg.strategy == "teacher":
        return teacher
    if cfg.perplexity_band == "low":
        return -loss
    if cfg.perplexity_band == "high":
        return loss
    percentile = (pl.Series(loss).rank("average").to_numpy() - 0.5) / max(len(loss), 1)
    return -np.abs(percentile - 0.5)


@dataclass(frozen=True)
class UnitNumbers:
    """What a unit's fate is decided from, from its score row alone."""

    score: np.ndarray  # the difference: (teacher - reference) log-prob per token
    teacher: np.ndarray  # teacher log-prob per token
    loss: np.ndarray  # reference loss per token
    pre: np.ndarray  # int8: 0 still in the running, else 1 + index in REASONS (the reasons before the floor)
    length: np.ndarray  # int64: the tokens it trains on, which token budgets count


def unit_numbers(scores: pl.DataFrame, cfg: SelectConfig) -> UnitNumbers:
    n_tokens = scores["n_tokens"].to_numpy().astype(np.int64)
    t = scores["teacher_logprob"].fill_null(np.nan).to_numpy()
    r = scores["reference_logprob"].fill_null(np.nan).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (t - r) / n_tokens  # one rounding, so equal differences tie and fall to the id
        teacher = t / n_tokens
        loss = -r / n_tokens
    pre = np.zeros(scores.height, dtype=np.int8)
    pre[~(np.isfinite(t) & np.isfinite(r))] = 1
    pre[(pre == 0) & (n_tokens < cfg.min_tokens)] = 2
    length = scores[length_column(scores)].to_numpy().astype(np.int64)
    return UnitNumbers(score, teacher, loss, pre, length)


def budget(cfg: SelectConfig, n_units: int, total_length: int) -> tuple[int, bool]:
    """The budget over `n_units` scored units of `total_length` tokens, and whether it counts tokens
    (else units)."""
    if cfg.keep_tokens is not None:
        return cfg.keep_tokens, True
    if cfg.keep_token_fraction is not None:
        return math.floor(cfg.keep_token_fraction * total_length + 0.5), True
    return math.floor(cfg.keep_fraction * n_units + 0.5), False


def cap_allowance(cfg: SelectConfig, budget: int) -> int:
    """What one source may spend of the budget (select.max_source_fraction)."""
    return math.floor(cfg.max_source_fraction * budget + 1e-9)  # 0.29 * 100 is 28.999...


def _ranking(key: np.ndarray, id_of: Callable[[np.ndarray], pl.Series]) -> np.ndarray:
    """Positions ordered by key, highest first, equal keys by id.

    A sort on the float key alone, then a string sort of only the rows that
    tie: sorting 100M (key, id) pairs would cost far more time and memory.
    """
    order = pl.Series(key).arg_sort(descending=True).to_numpy().astype(np.int64)  # a writable copy
    ranked = key[order]
    ties = np.flatnonzero(ranked[1:] == ranked[:-1])
    if ties.size:
        tied = np.unique(np.concatenate([ties, ties + 1]))
        perm = (
            pl.DataFrame({"k": -ranked[tied], "id": id_of(order[tied])})
            .with_row_index()
            .sort(["k", "id"])["index"]
            .to_numpy()
        )
        order[tied] = order[tied][perm]
    return order


def decide(scores: pl.DataFrame, cfg: SelectConfig, seed: int) -> pl.DataFrame:
    """scores: id, source, n_tokens, teacher_logprob, reference_logprob (+ any columns, kept as they are).
    Returns the rows in the same order with score, teacher_per_token, reference_loss, key, kept, reason.

    The whole corpus in one process: the reference the sharded selection (selection/cut.py) is tested
    against, and what it falls back to for perplexity's middle band."""
    u = unit_numbers(scores, cfg)
    reason = u.pre.copy()  # 0: kept, else 1 + index in REASONS
    floor = noise_floor(cfg, u.teacher[reason == 0]).threshold
    if floor is not None:
        reason[(reason == 0) & (u.teacher < floor)] = 3
    eligible = np.flatnonzero(reason == 0)
    everyone = len(eligible) == scores.height  # the usual case: no copies needed
    pick = (lambda a: a) if everyone else (lambda a: a[eligible])
    ids = scores["id"]
    id_of = ids.gather if everyone else (lambda positions: ids.gather(eligible[positions]))
    key = np.full(scores.height, np.nan)
    key[eligible] = unit_key(
        cfg,
        seed,
        id_of(np.arange(len(eligible))) if needs_ids(cfg) else None,
        pick(u.score),
        pick(u.teacher),
        pick(u.loss),
    )
    order = eligible[_ranking(pick(key), id_of)]

    spend, by_tokens = budget(cfg, scores.height, int(u.length.sum()))
    cost = u.length[order] if by_tokens else np.ones(len(order), dtype=np.int64)
    if cfg.max_source_fraction is not None:
        spent = (
            pl.DataFrame({"source": scores["source"].gather(order), "cost": cost})
            .select(pl.col("cost").cum_sum().over("source"))["cost"]
            .to_numpy()
        )
        reason[order[spent > cap_allowance(cfg, spend)]] = 4
    competing = np.flatnonzero(reason[order] == 0)
    within = np.zeros(len(order), dtype=bool)
    within[competing] = fill(cost[competing], spend)
    reason[order[competing[~within[competing]]]] = 5
    kept = np.zeros(scores.height, dtype=bool)
    kept[order[within]] = True
    return scores.with_columns(
        score=u.score,
        teacher_per_token=u.teacher,
        reference_loss=u.loss,
        key=key,
        kept=kept,
        reason=reason_labels(reason),
    )


def reason_labels(reason: np.ndarray) -> pl.Series:
    """Reason codes (0: kept, else 1 + index in REASONS) as the `reason` column."""
    return pl.Series(reason).replace_strict(
        {0: None, **{i + 1: r for i, r in enumerate(REASONS)}}, return_dtype=pl.Enum(list(REASONS))
    )


def fill(cost: np.ndarray, budget: int) -> np.ndarray:
    """Which units, taken in rank order, a budget keeps: every unit that still fits when its turn
    comes. One too big for what is left is passed over and the next ones that fit fill the rest,
    so what is left at the end is smaller than any unit passed over."""
    keep = np.zeros(len(cost), dtype=bool)
    rest = np.arange(len(cost))
    left = int(budget)
    while len(rest):
        rest = rest[cost[rest] <= left]  # what is left only shrinks: a unit too big now stays too big
        if not len(rest):
            break
        spent = np.cumsum(cost[rest])
        k = int(np.searchsorted(spent, left, side="right"))  # >= 1: the first one fits
        keep[rest[:k]] = True
        left -= int(spent[k - 1])
        rest = rest[k + 1 :]  # rest[k], if any, did not fit
    return keep


# Reasons that take a unit out of the pool before anything is ranked; source_cap and below_cut are the
# budget's, decided on the ranking.
FILTERS = REASONS[:3]


def pool_expr(pool: str) -> pl.Expr:
    """Whether a unit is in a random control's pool, over decisions. raw: every scored unit with a
    usable score (finite log-probs, a token or more), noise included: MiniPLM's baseline of no
    refinement. filtered: what is left after every filter (broken scores, select.min_tokens, the
    noise floor): the pool the strategy ranks, so that the selected text and this control differ
    only in how units are chosen from it (the ranking, and the source cap where one is set)."""
    reason = pl.col("reason").cast(pl.String)
    if pool == "raw":
        return ((reason.is_null() | (reason != "non_finite_score")) & (pl.col("n_tokens") >= 1)).fill_null(False)
    if pool == "filtered":
        return (reason.is_null() | ~reason.is_in(FILTERS)).fill_null(False)
    raise ValueError(f"no random control drawn from {pool!r}: raw or filtered")


def control_pool(decisions: pl.DataFrame, pool: str) -> pl.Series:
    """Which units a random control is drawn from (pool_expr)."""
    return decisions.select(pool_expr(pool)).to_series()


def control_seed(seed: int, control: RandomControl) -> int:
    """A seed of its own per control: the same draws as strategy random would be a needless coupling."""
    return seed + 1 + RANDOM_CONTROLS.index(control)


def random_baseline(scores: pl.DataFrame, decisions: pl.DataFrame, seed: int, pool: str = "raw") -> pl.Series:
    """A random selection of about the token budget `decisions` kept (never more), drawn from `pool`
    (control_pool): the control for what the strategy chose. Each unit of the pool draws a number
    (a seeded hash of its id); those of the smallest draws (ties by id) are kept while the tokens
    they train on fit in the budget, so the control falls short of it by less than one unit.
    Named after the control's decision column."""
    eligible = np.flatnonzero(control_pool(decisions, pool).to_numpy())
    control = next(c for c in RANDOM_CONTROLS if c.pool == pool)
    length = decisions[length_column(decisions)].to_numpy().astype(np.int64)
    spend = int(length[decisions["kept"].to_numpy()].sum())
    chosen = np.zeros(scores.height, dtype=bool)
    if spend and len(eligible):
        draw = uniform_by_id(scores["id"].gather(eligible), control_seed(seed, control))
        order = (
            pl.DataFrame({"u": draw, "id": scores["id"].gather(eligible), "at": eligible})
            .sort("u", "id")["at"]
            .to_numpy()
        )
        chosen[order[np.cumsum(length[order]) <= spend]] = True
    return pl.Series(control.column, chosen)

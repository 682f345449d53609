"""Deciding what to keep, from scores alone (never the text).

`decide` takes one row per scored document and returns the same rows with a
difference score, a ranking key, `kept`, and for every dropped document the
reason, applied in this order: too_few_tokens, low_teacher_logprob (the noise
filter), source_cap, below_cut. So scored = kept + the sum of the reasons.

Every strategy ranks by a key (higher is better) with ties broken by id, and
keeps the longest prefix of that ranking within the budget: exact and
deterministic. Random draws come from a generator seeded with `seed`, handed
out in id order, so they depend only on the set of documents, not on how
shards were split among workers.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from miniplm.config import SelectConfig

REASONS = ("too_few_tokens", "low_teacher_logprob", "source_cap", "below_cut")


def _uniform_by_id(ids: pl.Series, seed: int) -> pl.Series:
    """A uniform (0, 1) draw per id: a seeded generator's numbers in sorted-id order."""
    order = ids.arg_sort()
    u = np.empty(len(ids))
    u[order.to_numpy()] = np.random.default_rng(seed).random(len(ids))
    return pl.Series(np.clip(u, np.finfo(float).tiny, 1.0))


def _key(df: pl.DataFrame, cfg: SelectConfig, seed: int) -> pl.Series:
    if cfg.strategy == "difference":
        return df["score"]
    if cfg.strategy == "difference-sample":
        gumbel = -np.log(-np.log(_uniform_by_id(df["id"], seed).to_numpy()))
        return df["score"] / cfg.temperature + pl.Series(gumbel)
    if cfg.strategy == "random":
        return _uniform_by_id(df["id"], seed)
    if cfg.strategy == "teacher":
        return df["teacher_per_token"]
    loss = df["reference_loss"]
    if cfg.perplexity_band == "low":
        return -loss
    if cfg.perplexity_band == "high":
        return loss
    percentile = (loss.rank("average") - 0.5) / max(len(loss), 1)
    return -(percentile - 0.5).abs()


def decide(scores: pl.DataFrame, cfg: SelectConfig, seed: int) -> pl.DataFrame:
    """scores: id, source, n_tokens, teacher_logprob, reference_logprob (+ any columns, kept as they are)."""
    n_scored = scores.height
    df = scores.with_columns(
        score=(pl.col("teacher_logprob") - pl.col("reference_logprob")) / pl.col("n_tokens"),
        teacher_per_token=pl.col("teacher_logprob") / pl.col("n_tokens"),
        reference_loss=-pl.col("reference_logprob") / pl.col("n_tokens"),
    )
    reason = pl.when(pl.col("n_tokens") < cfg.min_tokens).then(pl.lit("too_few_tokens"))
    if cfg.min_teacher_logprob is not None:
        reason = reason.when(pl.col("teacher_per_token") < cfg.min_teacher_logprob).then(pl.lit("low_teacher_logprob"))
    df = df.with_columns(reason=reason.otherwise(None))

    eligible = df.filter(pl.col("reason").is_null())
    eligible = eligible.with_columns(key=_key(eligible, cfg, seed)).sort(["key", "id"], descending=[True, False])
    by_tokens = cfg.keep_tokens is not None
    budget = cfg.keep_tokens if by_tokens else math.floor(cfg.keep_fraction * n_scored + 0.5)
    eligible = eligible.with_columns(cost=pl.col("n_tokens") if by_tokens else pl.lit(1, pl.Int64))
    cost = pl.col("cost")

    if cfg.max_source_fraction is not None:
        allowance = cfg.max_source_fraction * budget
        capped = cost.cum_sum().over("source") > allowance
        eligible = eligible.with_columns(reason=pl.when(capped).then(pl.lit("source_cap")).otherwise(None))
    competing = pl.col("reason").is_null()
    within = pl.when(competing).then(cost).otherwise(0).cum_sum() <= budget
    eligible = eligible.with_columns(
        kept=competing & within,
        reason=pl.when(competing & ~within).then(pl.lit("below_cut")).otherwise(pl.col("reason")),
    )
    eligible = eligible.drop("cost")
    dropped = df.filter(pl.col("reason").is_not_null()).with_columns(key=pl.lit(None, pl.Float64), kept=pl.lit(False))
    return pl.concat([eligible, dropped.select(eligible.columns)])


def counts(decisions: pl.DataFrame) -> dict:
    dropped = dict(decisions.filter(~pl.col("kept")).group_by("reason").len().iter_rows())
    kept = decisions.filter(pl.col("kept"))
    return {
        "scored": decisions.height,
        "kept": kept.height,
        "dropped": {r: int(dropped.get(r, 0)) for r in REASONS},
        "tokens_scored": int(decisions["n_tokens"].sum() or 0),
        "tokens_kept": int(kept["n_tokens"].sum() or 0),
    }

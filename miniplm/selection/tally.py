"""What the decisions add up to: units and tokens per source, reason and pool, in one streaming pass.

The summary, the drop table, the random controls' counts and the report's tables are all sums over
the decisions. `tally` groups every unit by what these tables tell apart (its source, its reason,
whether it was kept, which pools and controls it is in) and sums its tokens, so that they are read
from a few hundred rows, whatever the corpus size: polars streams the decision shards through the
grouping without holding them.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from miniplm.schema.select import RANDOM_CONTROLS
from miniplm.selection.strategies import REASONS, pool_expr


@dataclass(frozen=True)
class Tally:
    groups: pl.DataFrame  # source, reason, kept, in_raw, in_filtered, each control's column; units, tokens, length
    whole_documents: bool  # length counts whole documents (doc_tokens) where only prefixes were scored
    controls: tuple[str, ...]  # the control columns the decisions hold

    def where(self, condition: pl.Expr) -> pl.DataFrame:
        return self.groups.filter(condition)

    def total(self, column: str, condition: pl.Expr | None = None) -> int:
        groups = self.groups if condition is None else self.groups.filter(condition)
        return int(groups[column].sum() or 0)


def tally(decisions: pl.DataFrame | pl.LazyFrame) -> Tally:
    """Group the decisions (a frame, or a scan of the decision shards) and sum their units and tokens."""
    lazy = decisions.lazy()
    names = lazy.collect_schema().names()
    whole = "doc_tokens" in names
    controls = tuple(c.column for c in RANDOM_CONTROLS if c.column in names)
    groups = (
        lazy.with_columns(in_raw=pool_expr("raw"), in_filtered=pool_expr("filtered"))
        .group_by("source", pl.col("reason").cast(pl.String), "kept", "in_raw", "in_filtered", *controls)
        .agg(
            units=pl.len(),
            tokens=pl.col("n_tokens").sum(),
            length=pl.col("doc_tokens" if whole else "n_tokens").sum(),
        )
        .collect(engine="streaming")
        .sort(pl.all(), nulls_last=True)
    )
    return Tally(groups, whole, controls)


def counts(t: Tally) -> dict:
    kept = pl.col("kept")
    dropped = dict(t.where(~kept).group_by("reason").agg(pl.col("units").sum()).iter_rows())
    scored, kept_units = t.total("units"), t.total("units", kept)
    summary = {
        "scored": scored,
        "kept": kept_units,
        "dropped": {r: int(dropped.get(r, 0)) for r in REASONS},
        "tokens_scored": t.total("tokens"),
        "tokens_kept": t.total("tokens", kept),
    }
    total, kept_length = t.total("length"), t.total("length", kept)
    summary["kept_fraction"] = {
        "units": kept_units / scored if scored else 0.0,
        "tokens": kept_length / total if total else 0.0,
    }
    if t.whole_documents:  # whole documents, where only prefixes were scored
        summary["doc_tokens"] = total
        summary["doc_tokens_kept"] = kept_length
    return summary


def control_counts(t: Tally) -> dict[str, dict]:
    """Per random control drawn (by its summary entry): its pool, what it kept and the tokens those
    train on (counted as the budget is: whole documents), and its folder."""
    out = {}
    for control in RANDOM_CONTROLS:
        if control.column not in t.controls:
            continue
        pool = pl.col(f"in_{control.pool}")
        out[control.entry] = {
            "pool": control.pool,
            "folder": control.folder,
            "label": control.label,
            "pool_units": t.total("units", pool),
            "pool_tokens": t.total("length", pool),
            "kept": t.total("units", pl.col(control.column)),
            "tokens": t.total("length", pl.col(control.column)),
        }
    return out


def by_source(t: Tally) -> pl.DataFrame:
    """Per source: units scored and kept, the kept fraction, tokens kept."""
    kept = pl.col("kept")
    return (
        t.groups.group_by("source")
        .agg(
            scored=pl.col("units").sum(),
            kept=pl.col("units").filter(kept).sum(),
            tokens_kept=pl.col("tokens").filter(kept).sum(),
        )
        .with_columns(kept_fraction=pl.col("kept") / pl.col("scored"))
        .sort("source")
    )


def reasons_by_source(t: Tally) -> list[tuple[str, str | None, int]]:
    """(source, reason or None for kept, units) for every pair that occurs."""
    rows = t.where(pl.col("source").is_not_null()).group_by("source", "reason").agg(pl.col("units").sum())
    return list(rows.sort("source", "reason", nulls_last=True).iter_rows())

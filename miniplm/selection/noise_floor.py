"""The noise floor: documents the teacher finds far harder per token than the rest of the corpus.

With a weak reference the difference score ranks some noise high (text the reference cannot model
either), so the selection first drops what the teacher itself scores as an outlier. A fixed
threshold depends on the teacher; `auto` (the default) adapts to it: the floor sits `k` median
absolute deviations below the median teacher log-prob per token of the scored documents (those
still in the running after the non-finite and length checks), a rule that a minority of noise
cannot drag along. The deviation is scaled by 1.4826, so that k = 3 is three standard deviations
on normal data. It is decided once, in the selection's global step, from
scores alone: exactly, from the rank tasks' sorted files (selection/order_stats.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import polars as pl

from miniplm.schema.select import SelectConfig
from miniplm.selection import order_stats

# The median absolute deviation of normal data is this many times smaller than its standard
# deviation: 1 / Phi^-1(3/4), scipy's median_abs_deviation(scale="normal").
NORMAL_MAD = 1.482602218505602
# Below this many documents the median and its deviation are too rough to call anything an outlier.
AUTO_MIN_DOCUMENTS = 50
# decide's reasons that come before the floor: those documents do not shape it
BEFORE_FLOOR = ("non_finite_score", "too_few_tokens")


@dataclass(frozen=True)
class NoiseFloor:
    rule: str  # "auto", "fixed" or "off"
    threshold: float | None  # teacher log-prob per token; None: nothing is dropped
    documents: int  # the documents it was measured on
    median: float | None = None
    mad: float | None = None
    k: float | None = None
    note: str = ""  # why an auto floor was not set

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.rule == "off":
            return "noise floor off (select.min_teacher_logprob: null)"
        if self.threshold is None:
            return f"no auto noise floor: {self.note}"
        if self.rule == "fixed":
            return f"noise floor at teacher log-prob {self.threshold:.3f} per token (select.min_teacher_logprob)"
        return (
            f"auto noise floor at teacher log-prob {self.threshold:.3f} per token: median {self.median:.3f} "
            f"minus {self.k:g} x {self.mad:.3f} (scaled median absolute deviation) over {self.documents:,} "
            "documents"
        )


def noise_floor(cfg: SelectConfig, teacher_per_token: np.ndarray) -> NoiseFloor:
    """The floor for documents whose teacher log-prob per token are `teacher_per_token` (finite)."""
    values = np.asarray(teacher_per_token)
    return _floor(cfg, len(values), lambda: float(np.median(values)), lambda m: float(np.median(np.abs(values - m))))


def noise_floor_sorted(cfg: SelectConfig, sorted_parts: Sequence) -> NoiseFloor:
    """The same floor from the values in parts, each sorted (the rank tasks' files, as SortedFile):
    exactly the numbers `noise_floor` gives on their concatenation, without holding them."""
    return _floor(
        cfg,
        sum(len(p) for p in sorted_parts),
        lambda: order_stats.median(sorted_parts),
        lambda m: order_stats.median_deviation(sorted_parts, m),
    )


def _floor(cfg: SelectConfig, n: int, median_of: Callable[[], float], deviation_of: Callable[[float], float]):
    if cfg.min_teacher_logprob is None:
        return NoiseFloor("off", None, n)
    if cfg.min_teacher_logprob != "auto":
        return NoiseFloor("fixed", float(cfg.min_teacher_logprob), n)
    if n < AUTO_MIN_DOCUMENTS:
        return NoiseFloor("auto", None, n, note=f"{n} documents, fewer than the {AUTO_MIN_DOCUMENTS} it needs")
    median = median_of()
    mad = deviation_of(median) * NORMAL_MAD
    if mad == 0.0:
        return NoiseFloor(
            "auto",
            None,
            n,
            median,
            mad,
            cfg.noise_floor_mads,
            note="half the documents or more score the same, so there is no spread to measure",
        )
    return NoiseFloor("auto", median - cfg.noise_floor_mads * mad, n, median, mad, cfg.noise_floor_mads)


def floor_of(decisions: pl.DataFrame, cfg: SelectConfig) -> NoiseFloor:
    """The floor `decide` used, measured again from its decisions (the same documents, the same numbers)."""
    measured = decisions.filter(pl.col("reason").is_null() | ~pl.col("reason").cast(pl.String).is_in(BEFORE_FLOOR))
    return noise_floor(cfg, measured["teacher_per_token"].to_numpy())

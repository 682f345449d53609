"""Which units the teacher and the reference label for a proxy: a seeded sample, stratified by source.

Each source is sampled at its own rate: the job's share (`proxy.sample_fraction`, or
`sample_units` over the main split's units), raised for a small source so that it gets about
`proxy.min_source_units` (all of a source smaller than that). A unit is in the sample when a
seeded hash of its id falls below its source's rate (miniplm/draws.py): the same whichever
shard holds it and whichever task asks, so the score stage and the proxy agree on the sample
without writing it down. A second draw splits the sample into the units the cheap model is fitted
on and those it is judged on.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from miniplm.draws import uniform_by_id
from miniplm.errors import StageError
from miniplm.rundir import RunDir
from miniplm.schema.proxy import ProxyConfig

# Draws of their own: the same seed as a random control or strategy would couple them.
SAMPLE_SALT = 1 << 33
HOLDOUT_SALT = 1 << 34


def source_counts(rd: RunDir) -> dict[str, int]:
    """The main split's documents per source, as prepare counted them."""
    if not rd.doc_stats.exists():
        raise StageError(f"{rd.root}: no prepared documents; run `miniplm prepare` first")
    sources = json.loads(rd.doc_stats.read_text()).get("sources", {})
    return {name: n for name, c in sorted(sources.items()) if (n := int(c.get("kept_main", 0)))}


def rates(counts: dict[str, int], cfg: ProxyConfig) -> dict[str, float]:
    """Each source's sampling rate."""
    total = sum(counts.values())
    base = cfg.sample_fraction if cfg.sample_fraction is not None else min(cfg.sample_units / max(total, 1), 1.0)
    return {name: min(1.0, max(base, cfg.min_source_units / n)) for name, n in counts.items()}


def in_sample(ids: pl.Series, sources: pl.Series, source_rates: dict[str, float], seed: int) -> np.ndarray:
    """Whether each unit is labelled by the LMs. A source the rates do not know (none of its documents
    counted in the main split: an instance's source is its documents') is sampled at the largest rate."""
    fallback = max(source_rates.values(), default=1.0)
    rate = sources.replace_strict(source_rates, default=fallback, return_dtype=pl.Float64).to_numpy()
    return uniform_by_id(ids, seed + SAMPLE_SALT) < rate


def held_out(ids: pl.Series, cfg: ProxyConfig, seed: int) -> np.ndarray:
    """Whether each sampled unit is kept out of fitting, to judge the fit on."""
    return uniform_by_id(ids, seed + HOLDOUT_SALT) < cfg.holdout_fraction

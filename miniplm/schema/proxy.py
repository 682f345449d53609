"""`proxy:`: score a sample with the teacher and the reference, and a cheap model the rest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from miniplm.schema.base import EXECUTION_ONLY, Strict

# Fewer labelled units than these and the numbers mean nothing: a linear model's rank agreement on a
# handful of held-out units swings by tenths from one seed to the next.
MIN_TRAIN_UNITS = 40
MIN_HELDOUT_UNITS = 10
SELECTED = "selected-proxy"  # the selection from the proxy's scores, with `use: beside`


class ProxyConfig(Strict):
    use: Literal["instead", "beside"] = Field(
        "instead",
        description="instead: score only the sample with the teacher and the reference, and select from the "
        "proxy's scores (the cheap path); beside: score every unit, and select a second time from the proxy's "
        "scores into RUN_DIR/selected-proxy/ (a comparison at the price of both)",
    )
    sample_fraction: float | None = Field(
        0.01, gt=0.0, le=1.0, description="the share of the main split's units the teacher and reference score"
    )
    sample_units: int | None = Field(
        None,
        gt=0,
        description="or: about this many units in the sample (as a share of the main split's documents; with "
        "score.unit: instance, that share of the instances)",
    )
    min_source_units: int = Field(
        20,
        ge=1,
        description="each source is sampled at a rate that gives it at least about this many units (all of a "
        "smaller source; counted in documents, so with instances a source of short documents gets fewer), so "
        "that no source is predicted from none of its own labels",
    )
    holdout_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="the sample's share kept out of fitting: the agreement with the LM scores is measured on it",
    )
    token_counts: Literal["exact", "estimated"] = Field(
        "exact",
        description="the token counts the budgets read: exact (the teacher's tokenizer over every document, as "
        "the score stage counts; the slower half of prediction) or estimated (characters times each source's "
        "tokens per character in the sample; documents only)",
    )
    word_ngrams: int = Field(
        2, ge=1, le=3, description="the model's features: hashed words (1), and word pairs (2), and triples (3)"
    )
    hash_bits: int = Field(20, ge=10, le=24, description="2**hash_bits hashed features")
    alpha: float = Field(1.0, gt=0.0, description="the ridge regression's L2 penalty")
    batch_units: int = Field(
        4096, gt=0, description="units featurized and predicted at once", json_schema_extra=EXECUTION_ONLY
    )

    @model_validator(mode="after")
    def _one_sample_size(self) -> "ProxyConfig":
        if "sample_units" in self.model_fields_set and "sample_fraction" in self.model_fields_set:
            if self.sample_units is not None and self.sample_fraction is not None:
                raise ValueError("give one sample size: sample_fraction or sample_units")
        if self.sample_units is not None and "sample_fraction" not in self.model_fields_set:
            self.__dict__["sample_fraction"] = None  # sample_units given alone replaces the default fraction
        if self.sample_fraction is None and self.sample_units is None:
            raise ValueError("give a sample size: sample_fraction or sample_units")
        return self

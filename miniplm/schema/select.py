"""`select:`: the strategy, its budget, the noise filters and the random controls."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from miniplm.schema.base import EXECUTION_ONLY, Strict


class RandomControl(NamedTuple):
    """A random selection of the strategy's token budget, the control a selected student is compared with."""

    pool: str  # raw: every scored unit; filtered: what is left after every filter (the pool the strategy ranks)
    folder: str  # its documents under RUN_DIR: what a token set names as `input`
    entry: str  # its counts in select's summary and manifest entry
    column: str  # its decision per unit in selection/decisions.parquet
    label: str  # how reports name it


# raw keeps the folder and entry it always had, so jobs and run directories made before filtered existed read on
RANDOM_CONTROLS = (
    RandomControl("raw", "selected-random", "random_baseline", "random_kept", "random (raw)"),
    RandomControl(
        "filtered", "selected-random-filtered", "random_baseline_filtered", "random_filtered_kept", "random (filtered)"
    ),
)


class SelectConfig(Strict):
    strategy: Literal["difference", "difference-sample", "random", "perplexity", "teacher"] = Field(
        "difference", description="difference: MiniPLM's top by (teacher - reference) log-prob per token"
    )
    keep_fraction: float | None = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="budget: this fraction of the scored units (documents or instances); null to give another budget",
    )
    keep_tokens: int | None = Field(None, gt=0, description="budget: this many tokens")
    keep_token_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="budget: this fraction of the scored tokens (the paper's alpha: 0.5 kept 50B of 100B tokens)",
    )
    temperature: float = Field(1.0, gt=0.0, description="difference-sample: Gumbel-top-k temperature")
    perplexity_band: Literal["low", "middle", "high"] = Field(
        "middle", description="perplexity: which band of reference loss"
    )
    min_teacher_logprob: float | Literal["auto"] | None = Field(
        "auto",
        description="noise floor: drop documents whose teacher log-prob per token is below this; auto: "
        "below the median minus noise_floor_mads median absolute deviations of the scored documents; null: off",
    )
    noise_floor_mads: float = Field(
        3.0,
        gt=0.0,
        description="auto noise floor: how many median absolute "
        "deviations (scaled by 1.4826, a standard deviation for normal data) below the "
        "median it sits",
    )
    min_tokens: int = Field(1, ge=1, description="noise filter: drop documents with fewer tokens")
    max_source_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="cap on any one source's share of the budget"
    )
    units_per_run: int = Field(
        2_000_000,
        gt=0,
        description="rank: units one task sorts at once, a run of consecutive score shards (about 150 bytes "
        "a unit in memory); select's cut merges the runs, one buffer of rows each",
    )
    report_examples: int = Field(
        10, ge=0, description="rows in each example table of the report", json_schema_extra=EXECUTION_ONLY
    )
    random_baseline: bool | Literal["raw", "filtered", "both"] = Field(
        False,
        description="random controls of the selection's token budget, for students to be compared with: "
        "raw (or true): drawn from every scored unit, noise included, into RUN_DIR/selected-random/; filtered: "
        "from what every filter left (the pool the strategy ranks), into RUN_DIR/selected-random-filtered/; "
        "both; false: none",
    )

    @field_validator("random_baseline", mode="before")
    @classmethod
    def _known_control(cls, value: Any) -> Any:
        if not (isinstance(value, bool) or isinstance(value, str) and value in ("raw", "filtered", "both")):
            raise ValueError(f"give false, raw (true means raw), filtered or both (got {value!r})")
        return value

    @property
    def random_controls(self) -> tuple[RandomControl, ...]:
        """The random controls asked for, raw before filtered."""
        asked = "raw" if self.random_baseline is True else self.random_baseline
        return tuple(c for c in RANDOM_CONTROLS if asked in (c.pool, "both"))

    @model_validator(mode="after")
    def _one_budget(self) -> "SelectConfig":
        given = [
            k
            for k in ("keep_fraction", "keep_tokens", "keep_token_fraction")
            if k in self.model_fields_set and getattr(self, k) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"give one budget: keep_fraction, keep_tokens or keep_token_fraction (got {', '.join(given)})"
            )
        if self.keep_fraction is None and self.keep_tokens is None and self.keep_token_fraction is None:
            raise ValueError("give a budget: keep_fraction, keep_tokens or keep_token_fraction")
        return self

"""`corpus:`: the raw sources and what prepare drops or keeps of them."""

from __future__ import annotations

import glob
import re
from typing import Literal

from pydantic import Field, model_validator

from miniplm.schema.base import EXECUTION_ONLY, Strict

InputFormat = Literal["jsonl", "parquet", "text", "hf_disk", "hf_hub"]
Split = Literal["main", "reference", "heldout"]  # the document splits prepare writes


class InputSpec(Strict):
    """One raw source of documents."""

    path: str = Field(description="file, folder or glob pattern; a dataset name for hf_hub")
    format: InputFormat
    text_field: str = "text"
    id_field: str | None = Field(None, description="column holding a stable document id")
    source_field: str | None = Field(None, description="column holding each document's source label")
    name: str | None = Field(None, description="source label when there is no source_field")
    metadata_fields: list[str] = Field(default_factory=list, description="extra columns to carry into the shards")
    split: str = Field("train", description="split to read for hf_disk/hf_hub datasets")
    limit: int | None = Field(
        None,
        gt=0,
        description="read only the first N records of each file (of the dataset for "
        "hf formats; the first N files for text): a quick, small run of a big source",
    )

    @property
    def source_name(self) -> str:
        """The label written to `source`: `name`, else the last plain part of the path."""
        if self.name:
            return self.name
        parts = [p for p in re.split(r"[\\/]", self.path) if p and not glob.has_magic(p)]
        stem = parts[-1] if parts else self.path
        for suffix in (".gz", ".zst", ".jsonl", ".json", ".parquet", ".txt"):
            stem = stem.removesuffix(suffix)
        return stem or "input"


class QualityConfig(Strict):
    """Gopher's quality and repetition rules (Rae et al. 2021), as datatrove's filters apply them, on
    whitespace-separated words. Each rule is a rejection reason; a rule set to null is off.

    The defaults are Gopher's, loosened where real reference text and scripture trip them (docs/noise-filters.md
    has the measurements and Gopher's own values)."""

    min_words: int = Field(
        50,
        ge=0,
        description="documents with fewer words are too short for these ratios to mean "
        "anything: they are kept unjudged, or dropped as short_document with drop_short",
    )
    drop_short: bool = Field(False, description="drop documents under min_words (Gopher does)")
    min_mean_word_length: float | None = Field(3.0, gt=0, description="mean_word_length: characters per word")
    max_mean_word_length: float | None = Field(10.0, gt=0)
    max_symbol_word_ratio: float | None = Field(
        0.5, gt=0, description="symbol_ratio: '#' or '...' per word (Gopher: 0.1)"
    )
    max_bullet_lines: float | None = Field(0.9, gt=0, le=1, description="bullet_lines: lines starting with a bullet")
    max_ellipsis_lines: float | None = Field(0.3, gt=0, le=1, description="ellipsis_lines: lines ending in '...'")
    min_alpha_words: float | None = Field(
        0.75, gt=0, le=1, description="non_alpha_words: words with a letter (Gopher: 0.8)"
    )
    min_stop_words: int | None = Field(2, gt=0, description="few_stop_words: of the, be, to, of, and, that, have, with")
    max_duplicate_lines: float | None = Field(
        0.45, gt=0, le=1, description="duplicate_lines: lines repeating an earlier line (Gopher: 0.3)"
    )
    max_duplicate_line_chars: float | None = Field(
        0.35, gt=0, le=1, description="duplicate_lines: their characters (Gopher: 0.2)"
    )
    max_duplicate_paragraphs: float | None = Field(0.3, gt=0, le=1, description="duplicate_paragraphs")
    max_duplicate_paragraph_chars: float | None = Field(
        0.2, gt=0, le=1, description="duplicate_paragraphs: their characters"
    )
    max_top_ngram_chars: dict[int, float] = Field(
        default_factory=lambda: {2: 0.3, 3: 0.27, 4: 0.24},
        description="top_ngram: n -> the most frequent word n-gram's share of the characters; {} for none "
        "(Gopher: 0.2, 0.18, 0.16)",
    )
    max_duplicate_ngram_chars: dict[int, float] = Field(
        default_factory=lambda: {5: 0.45, 6: 0.42, 7: 0.39, 8: 0.36, 9: 0.33, 10: 0.30},
        description="duplicate_ngrams: n -> share of the characters in repeated word n-grams; {} for none "
        "(Gopher: 0.15 for 5-grams down to 0.10 for 10-grams)",
    )

    @model_validator(mode="after")
    def _ngram_limits(self) -> "QualityConfig":
        for key in ("max_top_ngram_chars", "max_duplicate_ngram_chars"):
            for n, limit in getattr(self, key).items():
                if n < 1 or not 0 < limit <= 1:
                    raise ValueError(f"{key}: n-gram sizes are at least 1 and limits in (0, 1] (got {n}: {limit})")
        lo, hi = self.min_mean_word_length, self.max_mean_word_length
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"min_mean_word_length ({lo}) must be below max_mean_word_length ({hi})")
        return self


class NearDuplicateConfig(Strict):
    """Near-duplicate removal: MinHash signatures of each document's word n-grams, LSH bands, and of
    each group of documents whose bands collide, the first in input order kept."""

    ngram: int = Field(5, ge=1, description="words per shingle")
    num_perm: int = Field(112, ge=8, le=1024, description="MinHash permutations (signature length)")
    bands: int = Field(14, ge=1, description="LSH bands: documents sharing one are near-copies (FineWeb's 14)")
    rows: int = Field(8, ge=1, description="MinHash values per band (FineWeb's 8); bands x rows <= num_perm")
    threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="instead of bands and rows, the shape datasketch tunes for this Jaccard similarity of "
        "the n-gram sets (a pair there is found about half the time)",
    )

    @model_validator(mode="after")
    def _bands_fit(self) -> "NearDuplicateConfig":
        from datasketch import MinHashLSH

        if self.threshold is None:
            if self.bands * self.rows > self.num_perm:
                raise ValueError(
                    f"bands x rows ({self.bands} x {self.rows}) is more than num_perm ({self.num_perm}) MinHash values"
                )
            return self
        try:  # the LSH shape prepare will use; a threshold near 1 with few permutations has no such shape
            MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        except ValueError as e:
            raise ValueError(
                f"threshold {self.threshold} with num_perm {self.num_perm} leaves no LSH bands to "
                f"match on ({e}): lower the threshold or raise num_perm"
            ) from None
        return self


class CorpusConfig(Strict):
    inputs: list[InputSpec] = Field(min_length=1)
    docs_per_shard: int = Field(10_000, gt=0)
    reference_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    heldout_fraction: float = Field(0.01, ge=0.0, lt=1.0)
    on_error: Literal["skip", "fail"] = "skip"
    max_chars: int = Field(1_000_000, gt=0, description="longer documents are rejected as too_long")
    num_workers: int | None = Field(
        None, gt=0, description="prepare processes; default: one per core", json_schema_extra=EXECUTION_ONLY
    )
    quality: QualityConfig | None = Field(
        default_factory=QualityConfig, description="quality and repetition filters; null: off"
    )
    near_duplicates: NearDuplicateConfig | None = Field(
        default_factory=NearDuplicateConfig, description="near-duplicate removal; null: off"
    )
    dedup_partitions: int = Field(
        16,
        gt=0,
        le=65535,
        description="partitions of the dedup keys, each answered by one worker at a time, which holds about "
        "120 bytes per document of its partition (one per 4 million documents keeps a worker near 0.6 GB); "
        "the kept set is the same for any number",
    )

    @model_validator(mode="after")
    def _fractions_leave_a_main_split(self) -> "CorpusConfig":
        if self.reference_fraction + self.heldout_fraction >= 1.0:
            raise ValueError("reference_fraction + heldout_fraction must be below 1 (the rest is the main split)")
        return self

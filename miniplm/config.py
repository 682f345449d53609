"""Job files: the typed schema, reading, command-line overrides, and the fingerprint of a
job's sections that a stage's outputs depend on.

A job file is YAML. It is validated in full before any stage does work, and
every error names the file and the dotted key at fault, so a typo in a job
that would run for a day fails in the first second. (The checks that need the
stage registry or the filesystem are in miniplm/job.py.)

A key that changes how work runs but never what it writes is marked
`execution_only` where it is declared: changing it leaves finished work valid.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from miniplm.errors import ConfigError
from miniplm.paths import glob_paths, walk_files
from miniplm.rundir import RunDir

# json_schema_extra of a field that changes how a stage runs, never what it writes
EXECUTION_ONLY = {"execution_only": True}


def _numbers_only(annotation: Any) -> bool:
    """Whether a field takes numbers and not booleans (pydantic would read YAML's `true` as 1)."""
    args = typing.get_args(annotation) or (annotation,)
    return bool({int, float} & set(args)) and bool not in args


class _Strict(BaseModel):
    # no NaN or infinity anywhere: `.nan` would switch a threshold off without a word
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not a boolean")
        return value


def _home(path: str | None) -> str | None:
    """`~` and `~user` at the start of a path mean the home folder, as in a shell."""
    return os.path.expanduser(path) if path else path


InputFormat = Literal["jsonl", "parquet", "text", "hf_disk", "hf_hub"]


class InputSpec(_Strict):
    """One raw source of documents."""

    path: str = Field(description="file, folder or glob pattern; a dataset name for hf_hub")
    format: InputFormat
    text_field: str = "text"
    id_field: str | None = Field(None, description="column holding a stable document id")
    source_field: str | None = Field(None, description="column holding each document's source label")
    name: str | None = Field(None, description="source label when there is no source_field")
    metadata_fields: list[str] = Field(default_factory=list, description="extra columns to carry into the shards")
    split: str = Field("train", description="split to read for hf_disk/hf_hub datasets")
    limit: int | None = Field(None, gt=0, description="read only the first N records of each file (of the dataset for "
                              "hf formats; the first N files for text): a quick, small run of a big source")

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


class QualityConfig(_Strict):
    """Gopher's quality and repetition rules (Rae et al. 2021), as datatrove's filters apply them, on
    whitespace-separated words. Each rule is a rejection reason; a rule set to null is off.

    The defaults are Gopher's, loosened where real reference text and scripture trip them
    (docs/noise-filters.md has the measurements and Gopher's own values)."""

    min_words: int = Field(50, ge=0, description="documents with fewer words are too short for these ratios to mean "
                           "anything: they are kept unjudged, or dropped as short_document with drop_short")
    drop_short: bool = Field(False, description="drop documents under min_words (Gopher does)")
    min_mean_word_length: float | None = Field(3.0, gt=0, description="mean_word_length: characters per word")
    max_mean_word_length: float | None = Field(10.0, gt=0)
    max_symbol_word_ratio: float | None = Field(0.5, gt=0, description="symbol_ratio: '#' or '...' per word "
                                                "(Gopher: 0.1)")
    max_bullet_lines: float | None = Field(0.9, gt=0, le=1, description="bullet_lines: lines starting with a bullet")
    max_ellipsis_lines: float | None = Field(0.3, gt=0, le=1, description="ellipsis_lines: lines ending in '...'")
    min_alpha_words: float | None = Field(0.75, gt=0, le=1, description="non_alpha_words: words with a letter "
                                          "(Gopher: 0.8)")
    min_stop_words: int | None = Field(2, gt=0, description="few_stop_words: of the, be, to, of, and, that, have, with")
    max_duplicate_lines: float | None = Field(0.45, gt=0, le=1, description="duplicate_lines: lines repeating an "
                                              "earlier line (Gopher: 0.3)")
    max_duplicate_line_chars: float | None = Field(0.35, gt=0, le=1, description="duplicate_lines: their characters "
                                                   "(Gopher: 0.2)")
    max_duplicate_paragraphs: float | None = Field(0.3, gt=0, le=1, description="duplicate_paragraphs")
    max_duplicate_paragraph_chars: float | None = Field(0.2, gt=0, le=1, description="duplicate_paragraphs: their "
                                                        "characters")
    max_top_ngram_chars: dict[int, float] = Field(
        default_factory=lambda: {2: 0.3, 3: 0.27, 4: 0.24},
        description="top_ngram: n -> the most frequent word n-gram's share of the characters; {} for none "
        "(Gopher: 0.2, 0.18, 0.16)")
    max_duplicate_ngram_chars: dict[int, float] = Field(
        default_factory=lambda: {5: 0.45, 6: 0.42, 7: 0.39, 8: 0.36, 9: 0.33, 10: 0.30},
        description="duplicate_ngrams: n -> share of the characters in repeated word n-grams; {} for none "
        "(Gopher: 0.15 for 5-grams down to 0.10 for 10-grams)")

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


class NearDuplicateConfig(_Strict):
    """Near-duplicate removal: MinHash signatures of each document's word n-grams, LSH bands, and of
    each group of documents whose bands collide, the first in input order kept."""

    threshold: float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard similarity of the n-gram sets at which "
                             "a pair is found with probability about one half (LSH bands are tuned for it)")
    ngram: int = Field(5, ge=1, description="words per shingle")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations (signature length)")

    @model_validator(mode="after")
    def _bands_fit(self) -> "NearDuplicateConfig":
        from datasketch import MinHashLSH

        try:  # the LSH shape prepare will use; a threshold near 1 with few permutations has no such shape
            MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        except ValueError as e:
            raise ValueError(f"threshold {self.threshold} with num_perm {self.num_perm} leaves no LSH bands to "
                             f"match on ({e}): lower the threshold or raise num_perm") from None
        return self


class CorpusConfig(_Strict):
    inputs: list[InputSpec] = Field(min_length=1)
    docs_per_shard: int = Field(10_000, gt=0)
    reference_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    heldout_fraction: float = Field(0.01, ge=0.0, lt=1.0)
    on_error: Literal["skip", "fail"] = "skip"
    max_chars: int = Field(1_000_000, gt=0, description="longer documents are rejected as too_long")
    num_workers: int | None = Field(None, gt=0, description="prepare processes; default: one per core",
                                    json_schema_extra=EXECUTION_ONLY)
    quality: QualityConfig | None = Field(default_factory=QualityConfig, description="quality and repetition "
                                          "filters; null: off")
    near_duplicates: NearDuplicateConfig | None = Field(default_factory=NearDuplicateConfig,
                                                        description="near-duplicate removal; null: off")

    @model_validator(mode="after")
    def _fractions_leave_a_main_split(self) -> "CorpusConfig":
        if self.reference_fraction + self.heldout_fraction >= 1.0:
            raise ValueError("reference_fraction + heldout_fraction must be below 1 (the rest is the main split)")
        return self


Dtype = Literal["auto", "float32", "bfloat16", "float16", "float64"]
KernelChoice = Literal["auto", "torch"]
KERNELS_HELP = ("auto: cut-cross-entropy / liger-kernel / flash-attn where installed and on CUDA; "
                "torch: the plain torch paths")


class ModelSpec(_Strict):
    """A causal LM: a local Hugging Face folder, a hub id, or `smollm2-135m` (bundled)."""

    model: str
    dtype: Dtype = Field("auto", description="auto: bfloat16 on CUDA, float32 on CPU")

    _model_home = field_validator("model")(_home)


class ScoreConfig(_Strict):
    unit: Literal["document", "instance"] = Field(
        "document", description="score whole documents, or fixed-length instances of the EOS-joined stream (the paper)")
    max_length: int = Field(1024, ge=2, description="tokens per model input; longer documents are cut into windows")
    stride: int = Field(0, ge=0, description="tokens of the previous window repeated as context (not scored twice)")
    batch_tokens: int = Field(16384, gt=0, description="tokens per batch, padding included")
    checkpoint_every: int = Field(50, gt=0, description="batches between progress checkpoints inside a shard",
                                  json_schema_extra=EXECUTION_ONLY)
    max_tokens: int | None = Field(
        None, gt=0, description="score only each document's first N tokens: a cheaper estimate of its per-token "
        "difference score (the selection's token budgets still count whole documents)")
    save_token_logprobs: bool = False
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)
    packing: Literal["auto", "packed", "padded"] = Field(
        "auto", description="packed: windows back to back in one stream of batch_tokens (no padding; auto on CUDA); "
        "padded: length-sorted padded rows (auto on the CPU)", json_schema_extra=EXECUTION_ONLY)
    kernels: KernelChoice = Field("auto", description=KERNELS_HELP, json_schema_extra=EXECUTION_ONLY)
    compile: bool = Field(False, description="torch.compile each decoder layer of both models (compiled once, "
                          "then faster batches)", json_schema_extra=EXECUTION_ONLY)

    @model_validator(mode="after")
    def _stride_below_max_length(self) -> "ScoreConfig":
        if self.stride >= self.max_length:
            raise ValueError(f"stride ({self.stride}) must be below max_length ({self.max_length})")
        if self.max_tokens is not None and self.unit != "document":
            raise ValueError("max_tokens cuts documents short, and unit is instance: packed instances are scored whole")
        if self.batch_tokens < self.max_length:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must hold one window of max_length ({self.max_length})")
        return self


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
    RandomControl("filtered", "selected-random-filtered", "random_baseline_filtered", "random_filtered_kept",
                  "random (filtered)"),
)


class SelectConfig(_Strict):
    strategy: Literal["difference", "difference-sample", "random", "perplexity", "teacher"] = Field(
        "difference", description="difference: MiniPLM's top by (teacher - reference) log-prob per token")
    keep_fraction: float | None = Field(0.5, gt=0.0, le=1.0, description="budget: this fraction of the scored "
                                        "units (documents or instances); null to give another budget")
    keep_tokens: int | None = Field(None, gt=0, description="budget: this many tokens")
    keep_token_fraction: float | None = Field(None, gt=0.0, le=1.0, description="budget: this fraction of the scored "
                                              "tokens (the paper's alpha: 0.5 kept 50B of 100B tokens)")
    temperature: float = Field(1.0, gt=0.0, description="difference-sample: Gumbel-top-k temperature")
    perplexity_band: Literal["low", "middle", "high"] = Field("middle", description="perplexity: which band of reference loss")
    min_teacher_logprob: float | Literal["auto"] | None = Field(
        "auto", description="noise floor: drop documents whose teacher log-prob per token is below this; auto: "
        "below the median minus noise_floor_mads median absolute deviations of the scored documents; null: off")
    noise_floor_mads: float = Field(3.0, gt=0.0, description="auto noise floor: how many median absolute "
                                    "deviations (scaled by 1.4826, a standard deviation for normal data) below the "
                                    "median it sits")
    min_tokens: int = Field(1, ge=1, description="noise filter: drop documents with fewer tokens")
    max_source_fraction: float | None = Field(None, gt=0.0, le=1.0, description="cap on any one source's share of the budget")
    report_examples: int = Field(10, ge=0, description="rows in each example table of the report",
                                 json_schema_extra=EXECUTION_ONLY)
    random_baseline: bool | Literal["raw", "filtered", "both"] = Field(
        False, description="random controls of the selection's token budget, for students to be compared with: "
        "raw (or true): drawn from every scored unit, noise included, into RUN_DIR/selected-random/; filtered: "
        "from what every filter left (the pool the strategy ranks), into RUN_DIR/selected-random-filtered/; "
        "both; false: none")

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
        given = [k for k in ("keep_fraction", "keep_tokens", "keep_token_fraction")
                 if k in self.model_fields_set and getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one budget: keep_fraction, keep_tokens or keep_token_fraction (got {', '.join(given)})")
        if self.keep_fraction is None and self.keep_tokens is None and self.keep_token_fraction is None:
            raise ValueError("give a budget: keep_fraction, keep_tokens or keep_token_fraction")
        return self


NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


def plain_name(name: str) -> bool:
    """Whether `name` can name a folder under run_dir (models/NAME, tokens/NAME, ...): no separator,
    and no leading dot, which would make `.` and `..` (the folder itself, its parent) or a hidden folder."""
    return re.fullmatch(NAME_PATTERN, name) is not None and not name.startswith(".")


def _plain_name(name: str) -> str:
    if not plain_name(name):
        raise ValueError("a name is letters, digits, '_', '-' and '.', not starting with '.' (it names a folder "
                         "under run_dir)")
    return name


Name = Annotated[str, AfterValidator(_plain_name)]
Split = Literal["main", "reference", "heldout"]
DOCUMENT_INPUTS = ("selected", *(c.folder for c in RANDOM_CONTROLS), "main", "reference", "heldout")
GENERATED = "generated/"


class PromptFile(_Strict):
    """Prompts read from a file: JSONL (also .gz/.zst) or Parquet, one prompt per record."""

    path: str
    field: str = Field("prompt", description="the column or key holding the prompt text")
    id_field: str | None = Field(None, description="a column holding a stable prompt id; default: a hash of the "
                                 "file path and line")

    @property
    def format(self) -> Literal["jsonl", "parquet"]:
        return "parquet" if self.path.endswith(".parquet") else "jsonl"


class GenerateConfig(_Strict):
    """A corpus the teacher writes (sequence-level KD): RUN_DIR/generated/NAME/."""

    name: Name
    model: str = Field("teacher", description="teacher (the job's), or a folder, hub id or smollm2-135m")
    prompts: Split | PromptFile = Field(
        "main", description="a split of the prepared corpus (each document's first prompt_tokens tokens), or "
        "{path: prompts.jsonl, field: prompt}")
    prompt_tokens: int = Field(32, gt=0, description="split prompts: each document's first N tokens")
    max_new_tokens: int = Field(256, gt=0)
    samples: int = Field(1, gt=0, description="continuations per prompt")
    temperature: float = Field(1.0, ge=0.0, description="0: greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0: no top-k cut")
    include_prompt: bool = Field(True, description="text is the prompt followed by its continuation (MiniPLM's "
                                 "SeqKD corpus); false: the continuation alone")
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="hf: batched Hugging Face generate (CPU or GPU); vllm: on a GPU, when installed; "
        "auto: vllm where it can run, else hf")
    limit: int | None = Field(None, gt=0, description="use only the first N prompts")
    batch_tokens: int = Field(16384, gt=0, description="padded tokens (prompt + max_new_tokens, per sequence) in "
                              "a batch; batches are part of the seeded draw, so changing it changes the samples")
    checkpoint_every: int = Field(10, gt=0, description="batches between progress checkpoints inside a shard",
                                  json_schema_extra=EXECUTION_ONLY)
    report_examples: int = Field(8, ge=0, description="examples shown in the report", json_schema_extra=EXECUTION_ONLY)
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)


class Calibration(_Strict):
    """The text importance is measured on: a split's first documents, EOS-joined and cut into rows."""

    split: Split = "reference"
    docs: int = Field(256, gt=0)
    max_length: int = Field(512, ge=2, description="tokens per row")


class PruneTarget(_Strict):
    """The pruned shape: a preset's, and/or explicit sizes; what is not given stays the model's."""

    preset: str | None = Field(None, description="take hidden_size, intermediate_size, num_hidden_layers and "
                               "num_attention_heads from a preset (tiny, tiny-4l, qwen-104m, ...)")
    hidden_size: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)
    num_attention_heads: int | None = Field(None, gt=0)
    num_key_value_heads: int | None = Field(None, gt=0, description="default: as many as fit (at most the model's)")
    num_hidden_layers: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _known_preset(self) -> "PruneTarget":
        from miniplm.models.presets import PRESETS

        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (presets: {', '.join(PRESETS)})")
        return self

    def sizes(self) -> dict[str, int | None]:
        """The explicit sizes over the preset's."""
        from miniplm.models.presets import PRESETS

        preset = PRESETS[self.preset] if self.preset else {}
        keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
        return {k: getattr(self, k) or preset.get(k) for k in keys}


class PruneConfig(_Strict):
    """A smaller model cut out of the teacher (Minitron), to start students from: RUN_DIR/models/NAME/."""

    name: Name
    model: str = Field("teacher", description="teacher (the job's), or a folder, hub id or smollm2-135m")
    calibration: Calibration = Field(default_factory=Calibration)
    target: PruneTarget
    batch_tokens: int = Field(16384, gt=0, description="calibration tokens per forward pass",
                              json_schema_extra=EXECUTION_ONLY)
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)


class TokenSet(_Strict):
    """Documents packed into training rows for one tokenizer: RUN_DIR/tokens/NAME/."""

    name: Name
    input: str = Field(
        "selected", description="selected, selected-random or selected-random-filtered (select's random controls: "
        "drawn from every scored unit, or from what the filters left), a split of the prepared "
        "documents (main, reference, heldout), or generated/NAME (a corpus the generate stage wrote)")
    mix: dict[str, float] | None = Field(
        None, description="instead of an input: rows drawn from other token sets of the job in these shares, e.g. "
        "{generated: 0.5, original: 0.5} (as many as fit without repeating a row)")
    tokenizer: str | None = Field(None, description="a folder, hub id or smollm2-135m; default: the teacher's")
    seq_len: int = Field(1024, gt=0, description="tokens a row trains on (rows hold seq_len + 1)")

    @model_validator(mode="after")
    def _known_input(self) -> "TokenSet":
        if self.mix is not None:
            if "input" in self.model_fields_set or self.tokenizer is not None:
                raise ValueError("a mix takes its rows (and tokenizer) from other token sets: give no input or "
                                 "tokenizer")
            if not self.mix or any(w <= 0 for w in self.mix.values()):
                raise ValueError("mix: give each token set a positive share")
            top = max(self.mix.values())
            for part, weight in self.mix.items():
                if weight / top == 0:  # below the smallest float, next to the largest share
                    raise ValueError(f"mix: shares so far apart that {part!r} would get no rows")
            return self
        if self.input not in DOCUMENT_INPUTS and not (
                self.input.startswith(GENERATED) and plain_name(self.input.removeprefix(GENERATED))):
            raise ValueError(f"input must be one of {', '.join(DOCUMENT_INPUTS)} or generated/NAME "
                             f"(got {self.input!r})")
        return self

    @property
    def generated(self) -> str | None:
        """The generate entry this token set reads, if it reads one."""
        return self.input.removeprefix(GENERATED) if self.input.startswith(GENERATED) else None


class KDConfig(_Strict):
    """Distillation in training: loss = (1 - weight) * CE + weight * KD (MiniPLM's vanilla KD: kd_ratio 0.5)."""

    teacher: str = Field("teacher", description="teacher: the job's teacher; or a folder, hub id or smollm2-135m "
                         "(it must share the student's tokenizer)")
    source: Literal["online", "offline"] = Field(
        "online", description="online: the teacher runs in the training loop; offline: read the top-k log-probs the "
        "teacher-logits stage stored for the student's token set")
    loss: Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"] = Field(
        "forward_kl", description="forward_kl: vanilla KD; reverse_kl: MiniLLM's; jsd; DistiLLM's skew KLs")
    weight: float = Field(0.5, ge=0.0, le=1.0, description="of the KD term; CE gets 1 - weight")
    temperature: float = Field(1.0, gt=0.0, description="divides both models' logits in the KD term")
    beta: float | None = Field(None, gt=0.0, lt=1.0, description="jsd: the teacher's share of the mixture "
                               "(default 0.5); skew losses: the skew alpha (default 0.1)")
    logits: str | None = Field(None, description="offline: the teacher_logits set to read (its tokens must be the "
                               "student's)")

    @model_validator(mode="after")
    def _offline_reads_a_set(self) -> "KDConfig":
        if self.source == "offline" and self.logits is None:
            raise ValueError("source offline reads stored teacher log-probs: name the teacher_logits set in logits")
        if self.source == "online" and self.logits is not None:
            raise ValueError("logits is read with source: offline only (online runs the teacher)")
        if self.source == "offline" and self.teacher != "teacher":
            raise ValueError("source offline takes its teacher from the teacher_logits set; set teacher there")
        return self


class StudentConfig(_Strict):
    """A model to pretrain with DeepSpeed on a token set: RUN_DIR/models/NAME/."""

    name: Name
    preset: str | None = Field(None, description="tiny, tiny-4l, qwen-104m, qwen-200m, qwen-500m or qwen-1.2b")
    config: str | None = Field(None, description="instead of a preset: a Hugging Face config.json or model folder")
    init: str | None = Field(None, description="instead of a preset or config: start from these weights, a prune "
                             "entry's name or a model folder")
    tokens: str = Field(description="the token set (tokenize: name) to train on")
    heldout: str | None = Field(None, description="a token set for held-out loss", json_schema_extra=EXECUTION_ONLY)
    steps: int = Field(gt=0)
    seed: int | None = Field(None, ge=0, lt=2**32,
                             description="the training seed (initialisation, data order); default: the job's")
    batch_tokens: int = Field(524_288, gt=0, description="global batch in tokens (the paper: 512 x 1024)")
    micro_batch: int = Field(8, gt=0, description="rows per device per forward pass")
    lr: float | None = Field(None, gt=0, description="peak learning rate; default: the preset's")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine decays to lr * this")
    warmup_steps: int = Field(2000, ge=0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    clip: float = Field(1.0, gt=0)
    zero_stage: int = Field(1, ge=0, le=3)
    offload_optimizer: bool = False
    gradient_checkpointing: bool = False
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="merged over miniplm's DeepSpeed config")
    eval_every: int = Field(100, gt=0, json_schema_extra=EXECUTION_ONLY)
    eval_rows: int = Field(64, gt=0, description="held-out rows per evaluation", json_schema_extra=EXECUTION_ONLY)
    checkpoint_every: int = Field(500, gt=0, json_schema_extra=EXECUTION_ONLY)
    log_rows: bool = Field(False, description="write each step's row indices to the metrics (for audits and tests)",
                           json_schema_extra=EXECUTION_ONLY)
    tensorboard: bool = Field(False, json_schema_extra=EXECUTION_ONLY)
    wandb: bool = Field(False, json_schema_extra=EXECUTION_ONLY)
    kernels: KernelChoice = Field("auto", description=KERNELS_HELP, json_schema_extra=EXECUTION_ONLY)
    compile: bool = Field(False, description="torch.compile each decoder layer (minutes of compiling once, then "
                          "faster steps)", json_schema_extra=EXECUTION_ONLY)
    kd: KDConfig | None = Field(None, description="distill a teacher into the student while it trains")

    @model_validator(mode="after")
    def _one_architecture(self) -> "StudentConfig":
        from miniplm.models.presets import PRESETS

        if sum(x is not None for x in (self.preset, self.config, self.init)) != 1:
            raise ValueError("give exactly one of preset, config (random weights of that shape) or init (start from "
                             "those weights)")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (presets: {', '.join(PRESETS)})")
        return self


class TeacherLogitsSet(_Strict):
    """The teacher's top-k next-token log-probabilities at every position of a token set, for offline
    KD: RUN_DIR/teacher-logits/NAME/, aligned with the token set's shards and rows."""

    name: Name
    tokens: str = Field(description="the token set (tokenize: name) to run the teacher over")
    top_k: int = Field(32, gt=0, description="tokens kept per position (at most the vocabulary size)")
    teacher: str = Field("teacher", description="teacher: the job's teacher; or a folder, hub id or smollm2-135m")
    temperature: float = Field(1.0, gt=0.0, description="the log-probs are of softmax(logits / temperature); a "
                               "student reading them distills at this temperature")
    logprob_dtype: Literal["float16", "float32"] = Field(
        "float16", description="how log-probs are stored: float16 (half the bytes, ~1e-3 relative error in "
        "probabilities) or float32")
    batch_tokens: int = Field(16384, gt=0, description="tokens per teacher forward pass (whole rows)")
    checkpoint_every: int = Field(20, gt=0, description="batches between progress checkpoints inside a shard",
                                  json_schema_extra=EXECUTION_ONLY)
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)


class ReferenceTraining(StudentConfig):
    """How to train the reference LM here: on the reference split, with the teacher's tokenizer."""

    name: str = "reference"
    tokens: str = "reference"
    preset: str | None = "qwen-104m"
    seq_len: int = Field(1024, gt=0)


class ReferenceSpec(_Strict):
    """The reference LM: a model to load (`model`), or one to train in this run (`train`)."""

    model: str | None = None
    train: ReferenceTraining | None = None
    dtype: Dtype = "auto"

    _model_home = field_validator("model")(_home)

    @model_validator(mode="after")
    def _model_or_train(self) -> "ReferenceSpec":
        if (self.model is None) == (self.train is None):
            raise ValueError("give reference.model (a checkpoint) or reference.train (train it here), not both")
        if self.train is not None and (self.train.name, self.train.tokens) != ("reference", "reference"):
            raise ValueError("reference.train is always named 'reference' and trains on the 'reference' token set")
        if self.train is not None and self.train.kd is not None:
            raise ValueError("reference.train: the reference learns from its data alone (no kd)")
        return self


PAPER_TASKS = ["hellaswag", "lambada_openai", "winogrande", "openbookqa", "arc_easy", "arc_challenge", "piqa",
               "social_iqa", "storycloze_2018"]


class EvalModel(_Strict):
    """A model to evaluate that the job does not train: a folder, a hub id or smollm2-135m."""

    name: Name
    model: str


class EvalConfig(_Strict):
    """`miniplm eval`: held-out language modelling and zero-shot tasks, per model."""

    models: list[str | EvalModel] = Field(
        default_factory=lambda: ["students"],
        description="students (all of them), a student's name, reference, teacher, or {name, model} for any checkpoint")
    heldout: bool = Field(True, description="loss and perplexity on the run's held-out split")
    seeds: int = Field(1, ge=1, description="train every student this many times, with consecutive seeds, and "
                       "compare their mean and spread (replicas are named NAME.seed1, NAME.seed2, ...)")
    corpora: list[InputSpec] = Field(default_factory=list, description="extra evaluation corpora (inputs like "
                                     "corpus.inputs; give each a name), e.g. a DCLM sample")
    max_docs: int | None = Field(None, gt=0, description="at most this many documents per corpus")
    max_length: int | None = Field(None, ge=2, description="tokens per window; default: a student's training "
                                   "seq_len, else 1024")
    stride: int = Field(0, ge=0, description="context repeated from the previous window (not scored twice)")
    batch_tokens: int = Field(16384, gt=0)
    tasks: list[str] = Field(default_factory=lambda: list(PAPER_TASKS),
                             description="lm-evaluation-harness tasks (zero-shot); [] for none")
    task_paths: list[str] = Field(default_factory=list, description="folders or files of lm-eval task YAMLs, e.g. "
                                  "local tasks with dataset_path: json and data_files")
    limit: int | None = Field(None, gt=0, description="at most this many examples per task")
    num_fewshot: int = Field(0, ge=0)
    batch_size: int = Field(16, gt=0, description="lm-eval batch size", json_schema_extra=EXECUTION_ONLY)
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)

    @model_validator(mode="after")
    def _named_corpora(self) -> "EvalConfig":
        names = [c.source_name for c in self.corpora]
        if "heldout" in names or len(names) != len(set(names)):
            raise ValueError(f"corpora: give each a distinct name other than heldout (got {', '.join(names)})")
        return self


REPLICA_SUFFIX = re.compile(r"\.seed\d+$")


def replica_base(name: str) -> str:
    """The student a seed replica (NAME.seed1, ...; see miniplm/replicas.py) repeats; a student's own
    name is its base."""
    return REPLICA_SUFFIX.sub("", name)


def replica_names(name: str, seeds: int) -> list[str]:
    """The names of a student's seed replicas with `seeds` seeds in all (the student's own not among them)."""
    return [f"{name}.seed{k}" for k in range(1, seeds)]


class SlurmResources(_Strict):
    """sbatch settings for a stage; every key is optional and falls back to `slurm.defaults`."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = Field(None, description="time limit, as sbatch takes it: 04:00:00, 2-00:00:00")
    cpus: int | None = Field(None, gt=0, description="CPUs per task")
    mem: str | None = Field(None, description="memory per node, as sbatch takes it: 32G")
    gpus: int | None = Field(None, ge=0, description="array stages: GPUs per task")
    nodes: int | None = Field(None, gt=0, description="training stages: nodes")
    gpus_per_node: int | None = Field(None, ge=0, description="training stages: GPUs per node (one process each)")
    procs_per_node: int | None = Field(None, gt=0, description="training stages without GPUs: processes per node")
    max_tasks: int | None = Field(None, gt=0, description="array stages: at most this many array tasks, each taking "
                                  "every max_tasks-th shard; also the array size while the shard count is unknown")
    parallel: int | None = Field(None, gt=0, description="array stages: tasks running at once (sbatch --array=...%N)")
    sbatch: list[str] = Field(default_factory=list, description="extra #SBATCH lines, e.g. --constraint=h100")
    setup: list[str] = Field(default_factory=list, description="shell lines run before miniplm (module load, ...)")


class SlurmConfig(_Strict):
    """How `miniplm slurm` renders and submits the pipeline."""

    python: str | None = Field(None, description="the Python that runs miniplm on the nodes; default: the one "
                               "running `miniplm slurm` (after setup lines: plain `python` picks up an activated env)")
    setup: list[str] = Field(default_factory=list, description="shell lines every job runs first (module load, "
                             "conda activate, source venv/bin/activate)")
    templates: str | None = Field(None, description="a folder with your own array.sbatch.j2 and ranks.sbatch.j2 "
                                  "(copy miniplm's slurm/ folder to start)")
    defaults: SlurmResources = Field(default_factory=SlurmResources)
    stages: dict[str, SlurmResources] = Field(
        default_factory=dict, description="per stage (prepare, score, ..., train) or per student (train/NAME); "
        "names are checked against the stage registry when the job loads")

    def resources(self, step: str) -> SlurmResources:
        """The settings for a step (`score`, `train/small`): defaults, then the stage's, then the student's."""
        merged = self.defaults.model_dump(exclude_unset=True)
        # a stage, then a student of it (a seed replica takes its student's settings)
        for key in dict.fromkeys((step.split("/")[0], replica_base(step), step)):
            if key in self.stages:
                own = self.stages[key].model_dump(exclude_unset=True)
                merged.update({k: v for k, v in own.items() if k not in ("sbatch", "setup")})
                for k in ("sbatch", "setup"):
                    merged[k] = merged.get(k, []) + own.get(k, [])
        return SlurmResources.model_validate(merged)


class JobConfig(_Strict):
    run_dir: Path
    seed: int = Field(0, ge=0, lt=2**32, description="every seeded draw of the job (MinHash takes 0 to 2**32 - 1)")
    corpus: CorpusConfig
    teacher: ModelSpec | None = None
    reference: ReferenceSpec | None = None
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    generate: list[GenerateConfig] = Field(default_factory=list)
    prune: list[PruneConfig] = Field(default_factory=list)
    tokenize: list[TokenSet] = Field(default_factory=list)
    teacher_logits: list[TeacherLogitsSet] = Field(default_factory=list)
    students: list[StudentConfig] = Field(default_factory=list)
    eval: EvalConfig | None = None
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @field_validator("run_dir", mode="before")
    @classmethod
    def _run_dir_home(cls, value: Any) -> Any:
        return _home(str(value)) if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _token_set_names_unique(self) -> "JobConfig":
        names = [t.name for t in self.tokenize]
        if len(names) != len(set(names)):
            raise ValueError(f"tokenize: names must differ (got {', '.join(names)})")
        if self.eval is not None:
            students = {s.name for s in self.students}
            for m in self.eval.models:
                if isinstance(m, str) and m not in ("students", "reference", "teacher") and m not in students:
                    raise ValueError(f"eval.models: {m!r} is no student of the job; name a student, students, "
                                     "reference, teacher, or give {name: ..., model: PATH}")
        for control in RANDOM_CONTROLS:
            if any(t.input == control.folder for t in self.tokenize) and control not in self.select.random_controls:
                raise ValueError(f"tokenize: input {control.folder} needs select.random_baseline: {control.pool} "
                                 "(or both)")
        pruned = [p.name for p in self.prune]
        models = ["reference", *pruned, *(s.name for s in self.students)]
        if len(models) != len(set(models)):
            raise ValueError(f"prune and students: each writes RUN_DIR/models/NAME, so names must differ from each "
                             f"other and from 'reference' (got {', '.join(models[1:])})")
        self._check_model_names()
        for p in self.prune:
            if p.model == "teacher" and self.teacher is None:
                raise ValueError(f"prune: {p.name!r} prunes the teacher, and the job has no teacher")
        generated = [g.name for g in self.generate]
        if len(generated) != len(set(generated)):
            raise ValueError(f"generate: names must differ (got {', '.join(generated)})")
        for g in self.generate:
            if g.model == "teacher" and self.teacher is None:
                raise ValueError(f"generate: {g.name!r} writes with the teacher, and the job has no teacher")
        sets = {t.name: t for t in self.tokenize}
        for t in self.tokenize:
            for part in t.mix or {}:
                if part not in sets or sets[part].mix is not None:
                    raise ValueError(f"tokenize: {t.name!r} mixes {part!r}, which is no token set of the job made "
                                     f"from documents (token sets: {', '.join(sets)})")
                if sets[part].seq_len != t.seq_len:
                    raise ValueError(f"tokenize: {t.name!r} (seq_len {t.seq_len}) mixes {part!r} (seq_len "
                                     f"{sets[part].seq_len}); give them one seq_len")
            if len({sets[p].tokenizer for p in t.mix or {}}) > 1:
                raise ValueError(f"tokenize: {t.name!r} mixes token sets made with different tokenizers")
            if t.mix is None and t.generated is not None and t.generated not in generated:
                raise ValueError(f"tokenize: {t.name!r} reads {t.input!r}, and the job's generate list has no "
                                 f"{t.generated!r} (generate: {', '.join(generated) or 'none'})")
        self._check_distillation()
        return self

    def _check_model_names(self) -> None:
        """No name of the job stands for two models: a student's seed replicas (NAME.seed1, ...) write
        models/NAME.seed1 and are compared as one row with their student, so a prune entry, another
        student or an evaluated model may not take such a name."""
        seeds = self.eval.seeds if self.eval is not None else 1
        students = {s.name for s in self.students}
        replicas = {r for s in students for r in replica_names(s, seeds)}

        def check(key: str, name: str, *, by_shape: bool = False) -> None:
            base = replica_base(name)
            if name in replicas:
                why = f"eval.seeds: {seeds} trains it again as {', '.join(replica_names(base, seeds))}"
            elif by_shape and base != name and base in students:
                why = "with eval.seeds above 1 its replicas are named so, and the comparison shows them as one row"
            else:
                return
            raise ValueError(f"{key}: {name!r} is a seed replica of student {base!r} by its name ({why}); give it "
                             "another name")

        for i, s in enumerate(self.students):
            check(f"students.{i}.name", s.name, by_shape=True)
        for i, p in enumerate(self.prune):
            check(f"prune.{i}.name", p.name)
        evaluated: set[str] = set()
        for i, m in enumerate(self.eval.models if self.eval is not None else []):
            if not isinstance(m, EvalModel):
                continue
            check(f"eval.models.{i}.name", m.name)
            if m.name in students | {"reference", "teacher"} or m.name in evaluated:
                raise ValueError(f"eval.models.{i}.name: {m.name!r} names a model the job evaluates already "
                                 "(a student, reference, teacher or an earlier entry); give it another name")
            evaluated.add(m.name)

    def _check_distillation(self) -> None:
        sets = {t.name: t for t in self.teacher_logits}
        if len(sets) != len(self.teacher_logits):
            raise ValueError(f"teacher_logits: names must differ (got {', '.join(t.name for t in self.teacher_logits)})")
        token_sets = {t.name for t in self.tokenize}
        for t in self.teacher_logits:
            if t.tokens not in token_sets:
                raise ValueError(f"teacher_logits.{t.name}.tokens: no token set {t.tokens!r} in the job's tokenize list")
            if t.teacher == "teacher" and self.teacher is None:
                raise ValueError(f"teacher_logits.{t.name}: teacher is the job's teacher, and the job has none")
        for s in self.students:
            kd = s.kd
            if kd is None:
                continue
            where = f"students.{s.name}.kd"
            if kd.teacher == "teacher" and kd.source == "online" and self.teacher is None:
                raise ValueError(f"{where}: teacher is the job's teacher, and the job has none")
            if kd.logits is None:
                continue
            if kd.logits not in sets:
                raise ValueError(f"{where}.logits: no teacher_logits set {kd.logits!r} in the job "
                                 f"(sets: {', '.join(sets) or 'none'})")
            stored = sets[kd.logits]
            if stored.tokens != s.tokens:
                raise ValueError(f"{where}.logits: set {kd.logits!r} holds log-probs for token set {stored.tokens!r}, "
                                 f"and the student trains on {s.tokens!r}")
            if stored.temperature != kd.temperature:
                raise ValueError(f"{where}.temperature: {kd.temperature} differs from teacher_logits.{kd.logits}."
                                 f"temperature ({stored.temperature}), the temperature its log-probs were taken at")


def hashable_dump(model: BaseModel) -> dict[str, Any]:
    """The model as JSON-ready data, without its execution-only keys (at any depth)."""

    def strip(m: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
        for name, field in type(m).model_fields.items():
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("execution_only"):
                dumped.pop(name, None)
                continue
            value = getattr(m, name)
            if isinstance(value, BaseModel):
                strip(value, dumped[name])
            elif isinstance(value, (list, tuple)):
                for v, d in zip(value, dumped[name]):
                    if isinstance(v, BaseModel):
                        strip(v, d)
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, BaseModel):
                        strip(v, dumped[name][k])
        return dumped

    return strip(model, model.model_dump(mode="json"))


def config_hash(job: "JobConfig", sections: tuple[str, ...], *extra: str) -> str:
    """A fingerprint of everything a stage's outputs depend on: the job's `sections` (less their
    execution-only keys) and any `extra` facts the caller adds (such as the identity of its inputs)."""
    dumped = hashable_dump(job)
    relevant: dict[str, Any] = {key: dumped[key] for key in sections}
    relevant["extra"] = list(extra)
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class JobYamlError(yaml.YAMLError):
    """YAML that a job file may not hold, with the line and column where it is."""

    def __init__(self, problem: str, mark: yaml.Mark | None):
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        super().__init__(where + problem)


class _JobLoader(yaml.SafeLoader):
    """SafeLoader without aliases or duplicate keys.

    An alias is refused while the document is composed, before anything is
    expanded: nested aliases turn a few kilobytes into gigabytes. A key given
    twice is an error rather than the last one silently winning.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise JobYamlError(f"an alias (*{event.anchor}) is not accepted in a job: write the value out",
                               event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise JobYamlError(f"duplicate key {key!r}", key_node.start_mark)
                    seen.add(key)
                except TypeError:
                    pass  # an unhashable key: the base constructor says so
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """Parse job YAML: as yaml.safe_load, but refusing aliases and duplicate keys (JobYamlError)."""
    return yaml.load(text, Loader=_JobLoader)  # noqa: S506 (a SafeLoader subclass)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides in place; values are parsed as YAML (`0.3`, `[1, 2]`, `null`)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected key.path=value")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: not valid YAML: {e}") from None
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {key}: {part!r} is not an index of the list at {'.'.join(parts[:depth]) or 'top level'}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {key}: {'.'.join(parts[:depth])} is a value, not a section")
    return data


# Keys that say one thing several ways (one budget, one source of the reference): an override that
# sets one of them replaces the others where the file sets them.
ALTERNATIVES = (("select", "keep_fraction", "keep_tokens", "keep_token_fraction"), ("reference", "model", "train"))


def _drop_replaced_alternatives(data: dict[str, Any], overrides: list[str]) -> None:
    given = {item.partition("=")[0].strip() for item in overrides}
    for section, *keys in ALTERNATIVES:
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        chosen = [key for key in keys if f"{section}.{key}" in given]
        if len(chosen) == 1 and values.get(chosen[0]) is not None:
            for other in keys:
                if other != chosen[0]:
                    values.pop(other, None)


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid job"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        if not e["loc"] and re.match(r"[\w.-]+: ", msg):
            key, _, msg = msg.partition(": ")  # a check across sections names the key itself
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def expand_input(spec: InputSpec) -> list[str]:
    """The sorted files (or dataset folder) an input names, each once; empty when nothing matches.

    Paths keep the form the job wrote them in, so ids derived from them are
    the same on every machine that runs the job from the same directory.
    Folders are walked through symbolic links, each real folder once.
    """
    if spec.format == "hf_hub":
        return [spec.path]
    if spec.format == "hf_disk":
        return [spec.path] if os.path.isdir(spec.path) else []
    matches = glob_paths(spec.path) if glob.has_magic(spec.path) else [spec.path]
    files: list[str] = []
    for m in matches:
        if os.path.isdir(m):
            files.extend(walk_files(m))
        elif os.path.lexists(m):
            files.append(m)
    return list(dict.fromkeys(files))


def read_job(path: str | os.PathLike, overrides: list[str] | None = None) -> JobConfig:
    """Read, override and validate a job file against the schema; raise ConfigError naming the file
    and key. (miniplm.job.load_job adds the checks against the stages and the filesystem.)"""
    path = str(path)
    try:
        raw = Path(path).read_bytes()
        data = load_yaml(raw.decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read job file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: a job file is UTF-8 text, and line {line} is not "
                          f"(byte {raw[e.start]:#04x}: {e.reason})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file is a YAML mapping of keys to values")
    overrides = overrides or []
    apply_overrides(data, overrides)
    _drop_replaced_alternatives(data, overrides)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, job_label(path, overrides))) from None


def job_label(path: str | os.PathLike, overrides: list[str] | None) -> str:
    """How errors name a job: its file, and the overrides given with it."""
    return str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")


def dump_job(job: JobConfig) -> str:
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)


def reference_model(job: JobConfig) -> str:
    """The reference to score with: the given checkpoint, or the one this run trains."""
    if job.reference is None:
        raise ConfigError("the job has no `reference:`")
    return job.reference.model or str(RunDir(job.run_dir).model("reference"))


def reference_token_set(job: JobConfig) -> TokenSet:
    """The token set a reference trained here learns from (a job may define its own 'reference' set)."""
    assert job.reference is not None and job.reference.train is not None
    own = next((t for t in job.tokenize if t.name == "reference"), None)
    return own or TokenSet(name="reference", input="reference", seq_len=job.reference.train.seq_len)


def tokenizer_name(job: JobConfig, token_set: TokenSet) -> str:
    """The tokenizer a token set is made with: its own, else the teacher's (a mix's: its sets')."""
    if token_set.mix:
        return tokenizer_name(job, token_set_named(job, next(iter(token_set.mix))))
    if token_set.tokenizer:
        return token_set.tokenizer
    if job.teacher is None:
        raise ConfigError(f"tokenize.{token_set.name}: no tokenizer given and no teacher to take it from")
    return job.teacher.model


def source_model(job: JobConfig, entry: GenerateConfig | PruneConfig) -> ModelSpec:
    """The model a generate or prune entry uses: the job's teacher, or the model it names."""
    if entry.model == "teacher":
        if job.teacher is None:
            raise ConfigError(f"{entry.name}: the job has no teacher")
        return job.teacher
    return ModelSpec(model=entry.model)


def init_model(job: JobConfig, student: StudentConfig) -> str | None:
    """The folder a student starts from: a prune entry's output, or the folder its `init` names."""
    if student.init is None:
        return None
    if any(p.name == student.init for p in job.prune):
        return str(RunDir(job.run_dir).model(student.init))
    return student.init
def teacher_model(job: JobConfig, name: str) -> tuple[str, str]:
    """The model a `teacher:` key of kd or teacher_logits names, and its dtype: `teacher` is the
    job's teacher (with its dtype); anything else a model in the default dtype."""
    if name != "teacher":
        return name, "auto"
    if job.teacher is None:
        raise ConfigError("the job has no `teacher:` to distill from")
    return job.teacher.model, job.teacher.dtype


def token_set_named(job: JobConfig, name: str, token_sets: list[TokenSet] | None = None) -> TokenSet:
    for token_set in token_sets if token_sets is not None else job.tokenize:
        if token_set.name == name:
            return token_set
    raise ConfigError(f"students: no token set {name!r} in the job's tokenize list")

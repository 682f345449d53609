"""`eval:`: the models to evaluate, on which corpora and tasks, with how many seeds."""

from __future__ import annotations

from pydantic import Field, model_validator

from miniplm.schema.base import EXECUTION_ONLY, Name, Strict
from miniplm.schema.corpus import InputSpec

PAPER_TASKS = [
    "hellaswag",
    "lambada_openai",
    "winogrande",
    "openbookqa",
    "arc_easy",
    "arc_challenge",
    "piqa",
    "social_iqa",
    "storycloze_2018",
]


class EvalModel(Strict):
    """A model to evaluate that the job does not train: a folder, a hub id or smollm2-135m."""

    name: Name
    model: str


class EvalConfig(Strict):
    """`miniplm eval`: held-out language modelling and zero-shot tasks, per model."""

    models: list[str | EvalModel] = Field(
        default_factory=lambda: ["students"],
        description="students (all of them), a student's name, reference, teacher, or {name, model} for any checkpoint",
    )
    heldout: bool = Field(True, description="loss and perplexity on the run's held-out split")
    seeds: int = Field(
        1,
        ge=1,
        description="train every student this many times, with consecutive seeds, and "
        "compare their mean and spread (replicas are named NAME.seed1, NAME.seed2, ...)",
    )
    corpora: list[InputSpec] = Field(
        default_factory=list,
        description="extra evaluation corpora (inputs like corpus.inputs; give each a name), e.g. a DCLM sample",
    )
    max_docs: int | None = Field(None, gt=0, description="at most this many documents per corpus")
    max_length: int | None = Field(
        None, ge=2, description="tokens per window; default: a student's training seq_len, else 1024"
    )
    stride: int = Field(0, ge=0, description="context repeated from the previous window (not scored twice)")
    batch_tokens: int = Field(16384, gt=0)
    tasks: list[str] = Field(
        default_factory=lambda: list(PAPER_TASKS), description="lm-evaluation-harness tasks (zero-shot); [] for none"
    )
    task_paths: list[str] = Field(
        default_factory=list,
        description="folders or files of lm-eval task YAMLs, e.g. local tasks with dataset_path: json and data_files",
    )
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

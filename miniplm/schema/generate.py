"""`generate:`: corpora the teacher writes from prompts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from miniplm.schema.base import EXECUTION_ONLY, Name, Strict
from miniplm.schema.corpus import Split
from miniplm.schema.server import ServerConfig


class PromptFile(Strict):
    """Prompts read from a file: JSONL (also .gz/.zst) or Parquet, one prompt per record."""

    path: str
    field: str = Field("prompt", description="the column or key holding the prompt text")
    id_field: str | None = Field(
        None, description="a column holding a stable prompt id; default: a hash of the file path and line"
    )

    @property
    def format(self) -> Literal["jsonl", "parquet"]:
        return "parquet" if self.path.endswith(".parquet") else "jsonl"


class GenerateConfig(Strict):
    """A corpus the teacher writes (sequence-level KD): RUN_DIR/generated/NAME/."""

    name: Name
    model: str = Field("teacher", description="teacher (the job's), or a folder, hub id or smollm2-135m")
    prompts: Split | PromptFile = Field(
        "main",
        description="a split of the prepared corpus (each document's first prompt_tokens tokens), or "
        "{path: prompts.jsonl, field: prompt}",
    )
    prompt_tokens: int = Field(32, gt=0, description="split prompts: each document's first N tokens")
    max_new_tokens: int = Field(256, gt=0)
    samples: int = Field(1, gt=0, description="continuations per prompt")
    temperature: float = Field(1.0, ge=0.0, description="0: greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0: no top-k cut")
    include_prompt: bool = Field(
        True,
        description="text is the prompt followed by its continuation (MiniPLM's "
        "SeqKD corpus); false: the continuation alone",
    )
    backend: Literal["auto", "hf", "vllm", "server"] = Field(
        "auto",
        description="hf: batched Hugging Face generate (CPU or GPU); vllm: on a GPU, when installed; "
        "auto: vllm where it can run, else hf; server: a teacher behind an OpenAI-compatible server "
        "(`server:`), `model` naming its tokenizer",
    )
    server: ServerConfig | None = Field(None, description="backend: server: where the teacher is served")
    limit: int | None = Field(None, gt=0, description="use only the first N prompts")
    batch_tokens: int = Field(
        16384,
        gt=0,
        description="padded tokens (prompt + max_new_tokens, per sequence) in "
        "a batch; batches are part of the seeded draw, so changing it changes the samples",
    )
    checkpoint_every: int = Field(
        10, gt=0, description="batches between progress checkpoints inside a shard", json_schema_extra=EXECUTION_ONLY
    )
    report_examples: int = Field(8, ge=0, description="examples shown in the report", json_schema_extra=EXECUTION_ONLY)
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)

    @model_validator(mode="after")
    def _server_with_its_backend(self) -> "GenerateConfig":
        if self.backend == "server" and self.server is None:
            raise ValueError("backend: server needs `server: {url: ..., model: ...}`")
        if self.server is not None and self.backend != "server":
            raise ValueError(f"`server:` is set and backend is {self.backend!r}: set backend: server")
        return self

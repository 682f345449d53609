"""`score:`: how the teacher and the reference score the main split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from miniplm.schema.base import EXECUTION_ONLY, KERNELS_HELP, KernelChoice, Strict
from miniplm.schema.server import ServerConfig


class ScoreConfig(Strict):
    unit: Literal["document", "instance"] = Field(
        "document", description="score whole documents, or fixed-length instances of the EOS-joined stream (the paper)"
    )
    max_length: int = Field(1024, ge=2, description="tokens per model input; longer documents are cut into windows")
    stride: int = Field(0, ge=0, description="tokens of the previous window repeated as context (not scored twice)")
    batch_tokens: int = Field(16384, gt=0, description="tokens per batch, padding included")
    checkpoint_every: int = Field(
        50, gt=0, description="batches between progress checkpoints inside a shard", json_schema_extra=EXECUTION_ONLY
    )
    max_tokens: int | None = Field(
        None,
        gt=0,
        description="score only each document's first N tokens: a cheaper estimate of its per-token "
        "difference score (the selection's token budgets still count whole documents)",
    )
    save_token_logprobs: bool = False
    teacher_server: ServerConfig | None = Field(
        None,
        description="score with a teacher behind an OpenAI-compatible server that returns prompt log-probs "
        "(completions with echo and logprobs: vLLM, SGLang, llama-cpp-python); teacher.model then names "
        "its tokenizer",
    )
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)
    packing: Literal["auto", "packed", "padded"] = Field(
        "auto",
        description="packed: windows back to back in one stream of batch_tokens (no padding; auto on CUDA); "
        "padded: length-sorted padded rows (auto on the CPU)",
        json_schema_extra=EXECUTION_ONLY,
    )
    kernels: KernelChoice = Field("auto", description=KERNELS_HELP, json_schema_extra=EXECUTION_ONLY)
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer of both models (compiled once, then faster batches)",
        json_schema_extra=EXECUTION_ONLY,
    )

    @model_validator(mode="after")
    def _stride_below_max_length(self) -> "ScoreConfig":
        if self.stride >= self.max_length:
            raise ValueError(f"stride ({self.stride}) must be below max_length ({self.max_length})")
        if self.max_tokens is not None and self.unit != "document":
            raise ValueError("max_tokens cuts documents short, and unit is instance: packed instances are scored whole")
        if self.teacher_server is not None and self.teacher_server.prompt == "text":
            raise ValueError(
                "teacher_server.prompt: text: scoring sends token ids (the log-probs must be of the job's own "
                "tokens); use a server that takes them (vLLM, SGLang)"
            )
        if self.batch_tokens < self.max_length:
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must hold one window of max_length ({self.max_length})"
            )
        return self

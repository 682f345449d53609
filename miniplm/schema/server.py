"""`server:`: a teacher behind an OpenAI-compatible completions endpoint (vLLM, SGLang, llama.cpp)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from miniplm.schema.base import EXECUTION_ONLY, Strict


class ServerConfig(Strict):
    """Where the teacher is served and how hard to push it. Only `model` and `prompt` decide what the
    server writes; the rest says how to reach it, so a restarted server at a new address resumes the
    same work."""

    url: str = Field(
        description="the API's base URL, up to /v1: http://node17:8000/v1", json_schema_extra=EXECUTION_ONLY
    )
    model: str = Field(description="the model name the server serves (vllm serve NAME; GET /v1/models lists them)")
    api_key_env: str | None = Field(
        None,
        description="the environment variable holding the API key (the key itself never goes in the job)",
        json_schema_extra=EXECUTION_ONLY,
    )
    prompt: Literal["tokens", "text"] = Field(
        "tokens",
        description="tokens: prompts sent as token ids, exactly what in-process runs read (vLLM, SGLang, "
        "llama.cpp's llama-server); text: as text the server tokenizes (servers that take only strings, "
        "such as llama-cpp-python's)",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="fields sent with every request besides OpenAI's, for samplers the API lacks; a server's own "
        "defaults can reshape the teacher's distribution: for llama-cpp-python (top_k 40, min_p 0.05, "
        "repeat_penalty 1.1) send {top_k: 0, min_p: 0, repeat_penalty: 1}; vLLM's defaults are neutral",
    )
    max_concurrency: int = Field(
        16,
        gt=0,
        description="requests in flight at once from each worker: near the server's batch (vLLM's --max-num-seqs) "
        "over the workers; 1 for a server that runs one at a time (llama-cpp-python)",
        json_schema_extra=EXECUTION_ONLY,
    )
    timeout_s: float = Field(
        600.0, gt=0, description="seconds one request may take before it is retried", json_schema_extra=EXECUTION_ONLY
    )
    retries: int = Field(
        5,
        ge=0,
        description="retries of a request after a timeout, a dropped connection, 408, 409, 429 or 5xx, with "
        "exponential backoff (Retry-After honoured)",
        json_schema_extra=EXECUTION_ONLY,
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        return url.rstrip("/")

"""`teacher_logits:`: the teacher's top-k log-probs stored for offline distillation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from miniplm.schema.base import EXECUTION_ONLY, Name, Strict


class TeacherLogitsSet(Strict):
    """The teacher's top-k next-token log-probabilities at every position of a token set, for offline
    KD: RUN_DIR/teacher-logits/NAME/, aligned with the token set's shards and rows."""

    name: Name
    tokens: str = Field(description="the token set (tokenize: name) to run the teacher over")
    top_k: int = Field(32, gt=0, description="tokens kept per position (at most the vocabulary size)")
    teacher: str = Field("teacher", description="teacher: the job's teacher; or a folder, hub id or smollm2-135m")
    temperature: float = Field(
        1.0,
        gt=0.0,
        description="the log-probs are of softmax(logits / temperature); a "
        "student reading them distills at this temperature",
    )
    logprob_dtype: Literal["float16", "float32"] = Field(
        "float16",
        description="how log-probs are stored: float16 (half the bytes, ~1e-3 relative error in "
        "probabilities) or float32",
    )
    batch_tokens: int = Field(16384, gt=0, description="tokens per teacher forward pass (whole rows)")
    checkpoint_every: int = Field(
        20, gt=0, description="batches between progress checkpoints inside a shard", json_schema_extra=EXECUTION_ONLY
    )
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)

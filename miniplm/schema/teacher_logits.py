"""`teacher_logits:`: the teacher's next-token log-probs stored for offline distillation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from miniplm.schema.base import EXECUTION_ONLY, Name, Strict


class TeacherLogitsSet(Strict):
    """What the teacher predicts at every position of a token set, for offline KD:
    RUN_DIR/teacher-logits/NAME/, aligned with the token set's shards and rows."""

    name: Name
    tokens: str = Field(description="the token set (tokenize: name) to run the teacher over")
    mode: Literal["top_k", "top_p", "sampled"] = Field(
        "top_k",
        description="top_k: the k most likely tokens and the remaining mass (a biased, lower-bound loss); "
        "top_p: the fewest tokens whose mass reaches top_p, at most top_k, and the remaining mass; "
        "sampled: top_k tokens drawn from the teacher (an unbiased forward-KL estimate)",
    )
    top_k: int = Field(32, gt=0, description="tokens kept per position (top_p: at most this many; sampled: the draws)")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="mode top_p: the mass to reach (default 0.95)")
    teacher: str = Field("teacher", description="teacher: the job's teacher; or a folder, hub id or smollm2-135m")
    temperature: float = Field(
        1.0,
        gt=0.0,
        description="the log-probs are of softmax(logits / temperature); a "
        "student reading them distills at this temperature",
    )
    logprob_dtype: Literal["float16", "float32", "uint8"] = Field(
        "float16",
        description="how log-probs are stored: float16 (~1e-3 relative error in probabilities), float32, "
        "or uint8 (8 bits with a scale per position: a relative error of at most half the position's "
        "range of log-probs over 255, about 2% for a range of 20 nats)",
    )
    batch_tokens: int = Field(16384, gt=0, description="tokens per teacher forward pass (whole rows)")
    checkpoint_every: int = Field(
        20, gt=0, description="batches between progress checkpoints inside a shard", json_schema_extra=EXECUTION_ONLY
    )
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)

    @model_validator(mode="after")
    def _mode_settings(self) -> "TeacherLogitsSet":
        if self.mode == "top_p":
            if self.top_p is None:
                self.top_p = 0.95
            if self.top_k > 255:
                raise ValueError("mode top_p keeps at most 255 tokens a position (top_k)")
        elif self.top_p is not None:
            raise ValueError(f"top_p is read with mode: top_p only (this set's mode is {self.mode})")
        return self

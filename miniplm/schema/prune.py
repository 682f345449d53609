"""`prune:`: smaller models cut out of the teacher."""

from __future__ import annotations

from pydantic import Field, model_validator

from miniplm.schema.base import EXECUTION_ONLY, Name, Strict
from miniplm.schema.corpus import Split
from miniplm.schema.presets import PRESETS


class Calibration(Strict):
    """The text importance is measured on: a split's first documents, EOS-joined and cut into rows."""

    split: Split = "reference"
    docs: int = Field(256, gt=0)
    max_length: int = Field(512, ge=2, description="tokens per row")


class PruneTarget(Strict):
    """The pruned shape: a preset's, and/or explicit sizes; what is not given stays the model's."""

    preset: str | None = Field(
        None,
        description="take hidden_size, intermediate_size, num_hidden_layers and "
        "num_attention_heads from a preset (tiny, tiny-4l, qwen-104m, ...)",
    )
    hidden_size: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)
    num_attention_heads: int | None = Field(None, gt=0)
    num_key_value_heads: int | None = Field(None, gt=0, description="default: as many as fit (at most the model's)")
    num_hidden_layers: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _known_preset(self) -> "PruneTarget":
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (presets: {', '.join(PRESETS)})")
        return self

    def sizes(self) -> dict[str, int | None]:
        """The explicit sizes over the preset's."""
        preset = PRESETS[self.preset] if self.preset else {}
        keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
        return {k: getattr(self, k) or preset.get(k) for k in keys}


class PruneConfig(Strict):
    """A smaller model cut out of the teacher (Minitron), to start students from: RUN_DIR/models/NAME/."""

    name: Name
    model: str = Field("teacher", description="teacher (the job's), or a folder, hub id or smollm2-135m")
    calibration: Calibration = Field(default_factory=Calibration)
    target: PruneTarget
    batch_tokens: int = Field(
        16384, gt=0, description="calibration tokens per forward pass", json_schema_extra=EXECUTION_ONLY
    )
    device: str = Field("auto", json_schema_extra=EXECUTION_ONLY)

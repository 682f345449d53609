"""`reference:`: the reference LM, loaded or trained in the run."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from miniplm.schema.base import Dtype, Strict, expand_home
from miniplm.schema.students import StudentConfig


class ReferenceTraining(StudentConfig):
    """How to train the reference LM here: on the reference split, with the teacher's tokenizer."""

    name: str = "reference"
    tokens: str = "reference"
    preset: str | None = "qwen-104m"
    seq_len: int = Field(1024, gt=0)


class ReferenceSpec(Strict):
    """The reference LM: a model to load (`model`), or one to train in this run (`train`)."""

    model: str | None = None
    train: ReferenceTraining | None = None
    dtype: Dtype = "auto"

    _model_home = field_validator("model")(expand_home)

    @model_validator(mode="after")
    def _model_or_train(self) -> "ReferenceSpec":
        if (self.model is None) == (self.train is None):
            raise ValueError("give reference.model (a checkpoint) or reference.train (train it here), not both")
        if self.train is not None and (self.train.name, self.train.tokens) != ("reference", "reference"):
            raise ValueError("reference.train is always named 'reference' and trains on the 'reference' token set")
        if self.train is not None and self.train.kd is not None:
            raise ValueError("reference.train: the reference learns from its data alone (no kd)")
        return self

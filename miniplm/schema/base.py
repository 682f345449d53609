"""What every section of the job schema shares: strict models, the execution-only marker, names
that name folders, seed-replica names, model specs."""

from __future__ import annotations

import os
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# json_schema_extra of a field that changes how a stage runs, never what it writes
EXECUTION_ONLY = {"execution_only": True}


def _numbers_only(annotation: Any) -> bool:
    """Whether a field takes numbers and not booleans (pydantic would read YAML's `true` as 1)."""
    args = typing.get_args(annotation) or (annotation,)
    args = tuple(typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a for a in args)
    return bool({int, float} & set(args)) and bool not in args


class Strict(BaseModel):
    # no NaN or infinity anywhere: `.nan` would switch a threshold off without a word
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not a boolean")
        return value


def expand_home(path: str | None) -> str | None:
    """`~` and `~user` at the start of a path mean the home folder, as in a shell."""
    return os.path.expanduser(path) if path else path


Dtype = Literal["auto", "float32", "bfloat16", "float16", "float64"]
KernelChoice = Literal["auto", "torch"]
KERNELS_HELP = (
    "auto: cut-cross-entropy / liger-kernel / flash-attn where installed and on CUDA; torch: the plain torch paths"
)


class ModelSpec(Strict):
    """A causal LM: a local Hugging Face folder, a hub id, or `smollm2-135m` (bundled)."""

    model: str
    dtype: Dtype = Field("auto", description="auto: bfloat16 on CUDA, float32 on CPU")

    _model_home = field_validator("model")(expand_home)


NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


def plain_name(name: str) -> bool:
    """Whether `name` can name a folder under run_dir (models/NAME, tokens/NAME, ...): no separator,
    and no leading dot, which would make `.` and `..` (the folder itself, its parent) or a hidden folder."""
    return re.fullmatch(NAME_PATTERN, name) is not None and not name.startswith(".")


def _plain_name(name: str) -> str:
    if not plain_name(name):
        raise ValueError(
            "a name is letters, digits, '_', '-' and '.', not starting with '.' (it names a folder under run_dir)"
        )
    return name


Name = Annotated[str, AfterValidator(_plain_name)]


REPLICA_SUFFIX = re.compile(r"\.seed\d+$")


def replica_base(name: str) -> str:
    """The student a seed replica (NAME.seed1, ...; see miniplm/replicas.py) repeats; a student's own
    name is its base."""
    return REPLICA_SUFFIX.sub("", name)


def replica_names(name: str, seeds: int) -> list[str]:
    """The names of a student's seed replicas with `seeds` seeds in all (the student's own not among them)."""
    return [f"{name}.seed{k}" for k in range(1, seeds)]

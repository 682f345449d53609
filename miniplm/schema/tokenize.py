"""`tokenize:`: token sets, each documents packed into rows for one tokenizer, or a mix of others."""

from __future__ import annotations

from pydantic import Field, model_validator

from miniplm.schema.base import Name, Strict, plain_name
from miniplm.schema.proxy import SELECTED as PROXY_SELECTED
from miniplm.schema.select import RANDOM_CONTROLS

DOCUMENT_INPUTS = ("selected", *(c.folder for c in RANDOM_CONTROLS), PROXY_SELECTED, "main", "reference", "heldout")
GENERATED = "generated/"


def document_input(name: str) -> bool:
    """Whether `name` names documents a stage can read: a selection, a split or generated/NAME."""
    return name in DOCUMENT_INPUTS or (name.startswith(GENERATED) and plain_name(name.removeprefix(GENERATED)))


class TokenSet(Strict):
    """Documents packed into training rows for one tokenizer: RUN_DIR/tokens/NAME/."""

    name: Name
    input: str = Field(
        "selected",
        description="selected, selected-random or selected-random-filtered (select's random controls: "
        "drawn from every scored unit, or from what the filters left), selected-proxy (the selection from "
        "proxy scores, with proxy.use: beside), a split of the prepared "
        "documents (main, reference, heldout), or generated/NAME (a corpus the generate stage wrote)",
    )
    mix: dict[str, float] | None = Field(
        None,
        description="instead of an input: rows drawn from other token sets of the job in these shares, e.g. "
        "{generated: 0.5, original: 0.5} (as many as fit without repeating a row)",
    )
    tokenizer: str | None = Field(None, description="a folder, hub id or smollm2-135m; default: the teacher's")
    seq_len: int = Field(1024, gt=0, description="tokens a row trains on (rows hold seq_len + 1)")

    @model_validator(mode="after")
    def _known_input(self) -> "TokenSet":
        if self.mix is not None:
            if "input" in self.model_fields_set or self.tokenizer is not None:
                raise ValueError(
                    "a mix takes its rows (and tokenizer) from other token sets: give no input or tokenizer"
                )
            if not self.mix or any(w <= 0 for w in self.mix.values()):
                raise ValueError("mix: give each token set a positive share")
            top = max(self.mix.values())
            for part, weight in self.mix.items():
                if weight / top == 0:  # below the smallest float, next to the largest share
                    raise ValueError(f"mix: shares so far apart that {part!r} would get no rows")
            return self
        if not document_input(self.input):
            raise ValueError(
                f"input must be one of {', '.join(DOCUMENT_INPUTS)} or generated/NAME (got {self.input!r})"
            )
        return self

    @property
    def generated(self) -> str | None:
        """The generate entry this token set reads, if it reads one."""
        return self.input.removeprefix(GENERATED) if self.input.startswith(GENERATED) else None

"""`export:`: the refined corpus written in the formats other trainers read."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from miniplm.schema.base import Name, Strict, plain_name
from miniplm.schema.tokenize import DOCUMENT_INPUTS, document_input

TOKENS = "tokens/"  # a `from` naming a token set of the job: tokens/NAME


class ExportEntry(Strict):
    """One export: RUN_DIR/exports/NAME/, the files its trainer reads and a provenance sidecar."""

    model_config = Strict.model_config | {"populate_by_name": True}

    name: Name
    source: str = Field(
        "selected",
        alias="from",
        description="documents (selected, selected-random, selected-random-filtered, selected-proxy, a split: "
        "main, reference, heldout, or generated/NAME), tokenized here; or tokens/NAME, a token set of the job, "
        "whose rows are written as they are",
    )
    format: Literal["megatron", "olmo-npy", "litdata", "mds"] = Field(
        description="megatron (indexed .bin + .idx: Megatron-LM, NeMo, GPT-NeoX), olmo-npy (OLMo-core's flat "
        "token files), litdata (litgpt's optimized chunks), mds (MosaicML streaming: llm-foundry)"
    )
    tokenizer: str | None = Field(
        None,
        description="for documents: a folder, hub id or smollm2-135m (default: the teacher's); a token set "
        "keeps its own, so giving one there is an error",
    )

    dtype: Literal["auto", "uint16", "uint32", "int32"] = Field(
        "auto",
        description="the token ids' type on disk; auto: what the format's own tools choose for the vocabulary "
        "(megatron: uint16 below 65,500 ids, else int32; olmo-npy: uint16 up to 65,536, else uint32; litdata and "
        "mds: int32, as litgpt and llm-foundry write them)",
    )

    @model_validator(mode="after")
    def _known_source(self) -> "ExportEntry":
        if self.token_set is not None:
            if not plain_name(self.token_set):
                raise ValueError(f"from: tokens/NAME needs a token set's name (got {self.source!r})")
            if self.tokenizer is not None:
                raise ValueError(
                    f"from: {self.source} is a token set, written as it was tokenized: give no tokenizer "
                    "(export its documents to tokenize them with another)"
                )
        elif not document_input(self.source):
            raise ValueError(
                f"from must be one of {', '.join(DOCUMENT_INPUTS)}, generated/NAME or tokens/NAME (got {self.source!r})"
            )
        return self

    @property
    def token_set(self) -> str | None:
        """The token set this export writes, if it reads one."""
        return self.source.removeprefix(TOKENS) if self.source.startswith(TOKENS) else None

"""The fingerprint of a job's settings that a stage's outputs depend on: what the sections say,
less the keys marked execution-only (changing one leaves finished work valid)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from miniplm.schema.job import JobConfig


def hashable_dump(model: BaseModel) -> dict[str, Any]:
    """The model as JSON-ready data, without its execution-only keys (at any depth)."""

    def strip(m: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
        for name, field in type(m).model_fields.items():
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("execution_only"):
                dumped.pop(name, None)
                continue
            value = getattr(m, name)
            if isinstance(value, BaseModel):
                strip(value, dumped[name])
            elif isinstance(value, (list, tuple)):
                for v, d in zip(value, dumped[name]):
                    if isinstance(v, BaseModel):
                        strip(v, d)
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, BaseModel):
                        strip(v, dumped[name][k])
        return dumped

    return strip(model, model.model_dump(mode="json"))


def config_hash(job: JobConfig, sections: tuple[str, ...], *extra: str) -> str:
    """A fingerprint of everything a stage's outputs depend on: the job's `sections` (less their
    execution-only keys) and any `extra` facts the caller adds (such as the identity of its inputs)."""
    dumped = hashable_dump(job)
    relevant: dict[str, Any] = {key: dumped[key] for key in sections}
    relevant["extra"] = list(extra)
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]

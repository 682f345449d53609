"""Job files: YAML read strictly, `key.path=value` overrides, and validation errors that name the
file and the dotted key at fault."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from miniplm.errors import ConfigError
from miniplm.schema.job import JobConfig


class JobYamlError(yaml.YAMLError):
    """YAML that a job file may not hold, with the line and column where it is."""

    def __init__(self, problem: str, mark: yaml.Mark | None):
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        super().__init__(where + problem)


class _JobLoader(yaml.SafeLoader):
    """SafeLoader without aliases or duplicate keys.

    An alias is refused while the document is composed, before anything is
    expanded: nested aliases turn a few kilobytes into gigabytes. A key given
    twice is an error rather than the last one silently winning.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise JobYamlError(
                f"an alias (*{event.anchor}) is not accepted in a job: write the value out", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise JobYamlError(f"duplicate key {key!r}", key_node.start_mark)
                    seen.add(key)
                except TypeError:
                    pass  # an unhashable key: the base constructor says so
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """Parse job YAML: as yaml.safe_load, but refusing aliases and duplicate keys (JobYamlError)."""
    return yaml.load(text, Loader=_JobLoader)  # noqa: S506 (a SafeLoader subclass)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides in place; values are parsed as YAML (`0.3`, `[1, 2]`, `null`)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected key.path=value")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: not valid YAML: {e}") from None
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"override {key}: {part!r} is not an index of the list at "
                        f"{'.'.join(parts[:depth]) or 'top level'}"
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {key}: {'.'.join(parts[:depth])} is a value, not a section")
    return data


# Keys that say one thing several ways (one budget, one source of the reference): an override that
# sets one of them replaces the others where the file sets them.
ALTERNATIVES = (("select", "keep_fraction", "keep_tokens", "keep_token_fraction"), ("reference", "model", "train"))


def _drop_replaced_alternatives(data: dict[str, Any], overrides: list[str]) -> None:
    given = {item.partition("=")[0].strip() for item in overrides}
    for section, *keys in ALTERNATIVES:
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        chosen = [key for key in keys if f"{section}.{key}" in given]
        if len(chosen) == 1 and values.get(chosen[0]) is not None:
            for other in keys:
                if other != chosen[0]:
                    values.pop(other, None)


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid job"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        if not e["loc"] and re.match(r"[\w.-]+: ", msg):
            key, _, msg = msg.partition(": ")  # a check across sections names the key itself
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def read_job(path: str | os.PathLike, overrides: list[str] | None = None) -> JobConfig:
    """Read, override and validate a job file against the schema; raise ConfigError naming the file
    and key. (miniplm.job.load_job adds the checks against the stages and the filesystem.)"""
    path = str(path)
    try:
        raw = Path(path).read_bytes()
        data = load_yaml(raw.decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read job file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: a job file is UTF-8 text, and line {line} is not (byte {raw[e.start]:#04x}: {e.reason})"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file is a YAML mapping of keys to values")
    overrides = overrides or []
    apply_overrides(data, overrides)
    _drop_replaced_alternatives(data, overrides)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, job_label(path, overrides))) from None


def job_label(path: str | os.PathLike, overrides: list[str] | None) -> str:
    """How errors name a job: its file, and the overrides given with it."""
    return str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")


def dump_job(job: JobConfig) -> str:
    """The job as YAML, every default written out (the copy a run directory keeps)."""
    return yaml.safe_dump(job.model_dump(mode="json", by_alias=True), sort_keys=False)

"""Where a generate entry's prompts come from, shard by shard.

Split prompts are the prepared documents of a split, each cut to its first
`prompt_tokens` tokens: generated shard k reads document shard k, and `limit`
keeps the first N documents in shard order (shards it does not reach are not
generated at all). File prompts are read once, by the stage's global step:
invalid records are skipped and counted by reason (or, under
`corpus.on_error: fail`, stop the stage with their file and line), and the
prompts are written in shards of `corpus.docs_per_shard` into the stage's
scratch space, which any worker then reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from miniplm.corpus.documents import BAD_INPUT_REASONS, generated_id, problem_with
from miniplm.corpus.readers import Rejection, read_input
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_path, atomic_write_json
from miniplm.models.text_tokens import token_ids
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.corpus import InputSpec
from miniplm.schema.generate import GenerateConfig, PromptFile
from miniplm.schema.job import JobConfig

PROMPT_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])


@dataclass
class PromptShard:
    """The prompts of one generated shard, tokenized (without the prefix token every sequence starts with)."""

    index: int
    ids: list[str]
    sources: list[str]
    tokens: list[list[int]]
    too_long: int = 0  # file prompts skipped: with the prefix token they leave no room for a new token


def context_length(config) -> int | None:
    """The positions a model reads (None where its config does not say)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def new_token_limit(max_new_tokens: int, context: int | None, width: int) -> int:
    """max_new_tokens, cut to what fits in the context after `width` tokens (prefix and prompt): a model
    reading past its positions writes noise."""
    return max_new_tokens if context is None else max(min(max_new_tokens, context - width), 1)


def split_plan(rd: RunDir, split: str, limit: int | None) -> list[tuple[Path, int]]:
    """Per generated shard: the document shard it reads and how many of its first documents."""
    plan = []
    left = limit if limit is not None else float("inf")
    for path in rd.doc_shards(split):
        if left <= 0:
            break
        take = int(min(pq.read_metadata(path).num_rows, left))
        if take:
            plan.append((path, take))
        left -= take
    return plan


def readable_prompt_file(prompts: PromptFile) -> str:
    """The prompt file's path, once it is known to be readable (its content is fingerprinted as an input)."""
    try:
        with open(prompts.path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"generate: prompts.path: cannot read {prompts.path!r}: {e.strerror or e}") from None
    return prompts.path


def prompt_folder(rd: RunDir, part_name: str) -> Path:
    return rd.work(part_name) / "prompts"


def write_file_prompts(job: JobConfig, entry: GenerateConfig, folder: Path) -> dict:
    """Read the prompt file into prompt shards under `folder`; the counts (read, kept, rejected by reason)."""
    assert isinstance(entry.prompts, PromptFile)
    spec = InputSpec(
        path=entry.prompts.path,
        format=entry.prompts.format,
        text_field=entry.prompts.field,
        id_field=entry.prompts.id_field,
        name=entry.name,
    )
    rows: dict[str, list] = {"id": [], "text": [], "source": []}
    rejected: dict[str, int] = {}
    read = 0
    for path, item in read_input(spec, (entry.prompts.path,), job.corpus.max_chars):
        problem = (
            (item.reason, item.detail)
            if isinstance(item, Rejection)
            else problem_with(item, needs_id=spec.id_field is not None, max_chars=job.corpus.max_chars)
        )
        read += item.count if isinstance(item, Rejection) else 1
        if problem is not None:
            line = item.line
            if job.corpus.on_error == "fail" and problem[0] in BAD_INPUT_REASONS:
                raise StageError(f"{path}:{line}: {problem[0]}: {problem[1]} (corpus.on_error: fail)")
            rejected[problem[0]] = rejected.get(problem[0], 0) + (item.count if isinstance(item, Rejection) else 1)
            continue
        if entry.limit is not None and len(rows["id"]) >= entry.limit:
            break
        rows["id"].append(str(item.id) if item.id is not None else generated_id(path, item.line))
        rows["text"].append(item.text)
        rows["source"].append(entry.name)
    if len(set(rows["id"])) != len(rows["id"]):
        raise StageError(
            f"{entry.prompts.path}: prompt ids repeat; give each prompt a distinct {entry.prompts.id_field!r}"
        )
    table = pa.table(rows, schema=PROMPT_SCHEMA)
    per_shard = job.corpus.docs_per_shard
    for k, start in enumerate(range(0, table.num_rows, per_shard)):
        with atomic_path(folder / shard_name(k, ".parquet")) as tmp:
            pq.write_table(table.slice(start, per_shard), tmp)
    counts = {"prompts_read": read, "prompts": table.num_rows, "prompts_rejected": rejected}
    atomic_write_json(folder / "stats.json", counts)
    return counts


def file_prompt_shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.parquet"))


def file_prompt_stats(folder: Path) -> dict:
    return json.loads((folder / "stats.json").read_text())


def read_prompts(
    source: Path, rows: int, entry: GenerateConfig, tokenizer, index: int, context: int | None = None
) -> PromptShard:
    """The first `rows` prompts of a document or prompt shard, tokenized. Split prompts are cut to prompt_tokens
    (and to what leaves room in the model's `context` for the prefix token and one new token); file prompts
    that do not leave that room are skipped and counted, since cutting a question would change what it asks."""
    try:
        table = pq.read_table(source, columns=["id", "source", "text"]).slice(0, rows)
    except (OSError, pa.ArrowException) as e:
        raise StageError(f"{source}: cannot read the prompts: {e}") from None
    tokens = token_ids(tokenizer, table["text"].to_pylist())
    ids, sources = table["id"].to_pylist(), table["source"].to_pylist()
    room = None if context is None else max(context - 2, 1)
    if not isinstance(entry.prompts, PromptFile):
        cut = entry.prompt_tokens if room is None else min(entry.prompt_tokens, room)
        return PromptShard(index, ids, sources, [t[:cut] for t in tokens])
    keep = [i for i, t in enumerate(tokens) if room is None or len(t) <= room]
    return PromptShard(
        index,
        [ids[i] for i in keep],
        [sources[i] for i in keep],
        [tokens[i] for i in keep],
        too_long=len(tokens) - len(keep),
    )

"""`miniplm tokenize`: documents -> packed token shards for a tokenizer.

For each token set of the job, each input shard (selected documents, or a
split) becomes RUN_DIR/tokens/NAME/shard-NNNNN.arrow: its documents
tokenized, each followed by EOS, joined into one stream and cut into rows of
seq_len + 1 tokens, the rows shuffled with a generator seeded by (seed,
shard). The stream's tail that does not fill a row is counted, not hidden.
Shards are independent, so any worker (or array task) can take any of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from miniplm.config import ConfigError, JobConfig, TokenSet, dump_job, stage_config_hash
from miniplm.corpus.parquet import READ_BUFFER_BYTES, iter_batches
from miniplm.corpus.tokens import write_rows
from miniplm.models.loading import load_tokenizer, model_fingerprint
from miniplm.rundir import RunDir, StageError, Worker, atomic_write_json

STATS = ("documents", "tokens", "rows", "tail_tokens_dropped")


def stage_name(token_set: TokenSet) -> str:
    return f"tokenize/{token_set.name}"


def output_dir(rd: RunDir, token_set: TokenSet) -> Path:
    return rd.root / "tokens" / token_set.name


def input_shards(rd: RunDir, token_set: TokenSet) -> tuple[list[Path], str]:
    """The input shards and the hash of the stage that made them."""
    selected = token_set.input.startswith("selected")
    stage = "select" if selected else "prepare"
    state = rd.stage_state(stage)
    if state.get("state") != "done":
        raise StageError(f"{rd.root}: tokenize {token_set.name!r} reads {token_set.input!r} documents; "
                         f"run `miniplm {stage}` first")
    if not selected:
        return rd.doc_shards(token_set.input), state["config_hash"]
    if token_set.input == "selected-random" and "random_baseline" not in state.get("counts", {}):
        raise ConfigError(f"tokenize.{token_set.name}: input selected-random needs select.random_baseline: true")
    return sorted((rd.root / token_set.input).glob("shard-*.parquet")), state["config_hash"]


def pack(token_lists: list[list[int]], eos: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rows of seq_len + 1 tokens from the EOS-joined stream, shuffled; and the tail left over."""
    pieces = [np.asarray(t + [eos], dtype=np.int64) for t in token_lists]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    width = seq_len + 1
    n_rows = len(stream) // width
    rows = stream[: n_rows * width].reshape(n_rows, width)
    return rows[rng.permutation(n_rows)], len(stream) - n_rows * width


def tokenize_shard(job: JobConfig, token_set: TokenSet, tokenizer, eos: int, index: int, source: Path, out: Path) -> dict:
    token_lists: list[list[int]] = []
    for batch in iter_batches(pq.ParquetFile(source, buffer_size=READ_BUFFER_BYTES), 1024, ["text"]):
        token_lists += tokenizer(batch.column(0).to_pylist(), add_special_tokens=False)["input_ids"]
    rows, tail = pack(token_lists, eos, token_set.seq_len, np.random.default_rng([job.seed, index]))
    write_rows(out / f"shard-{index:05d}.arrow", rows)
    stats = {"documents": len(token_lists), "tokens": sum(len(t) + 1 for t in token_lists),
             "rows": len(rows), "tail_tokens_dropped": tail}
    atomic_write_json(out / f"shard-{index:05d}.json", stats)
    return stats


def _tokenizer_name(job: JobConfig, token_set: TokenSet) -> str:
    if token_set.tokenizer:
        return token_set.tokenizer
    if job.teacher is None:
        raise ConfigError(f"tokenize.{token_set.name}: no tokenizer given and no teacher to take it from")
    return job.teacher.model


def run_set(job: JobConfig, token_set: TokenSet, worker: Worker, *, force: bool, show_progress: bool) -> dict | None:
    rd = RunDir(job.run_dir)
    stage = stage_name(token_set)
    shards, input_hash = input_shards(rd, token_set)
    name = _tokenizer_name(job, token_set)
    tokenizer = load_tokenizer(name)
    tokenizer.model_max_length = sys.maxsize  # documents are packed here, not truncated
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenize.{token_set.name}: tokenizer {name!r} has no EOS token to join documents with")
    config_hash = stage_config_hash(job, "tokenize", token_set.model_dump_json(), input_hash, model_fingerprint(name))
    out = output_dir(rd, token_set)
    if rd.open_stage(stage, config_hash, dump_job(job), [out], force=force):
        return rd.stage_state(stage)["counts"]
    try:
        todo = [i for i in worker.owned(len(shards)) if not rd.is_done(stage, f"shard-{i:05d}", config_hash)]
        for i in tqdm(todo, desc=f"tokenize {token_set.name}", unit="shard", disable=not show_progress or not todo):
            tokenize_shard(job, token_set, tokenizer, tokenizer.eos_token_id, i, shards[i], out)
            rd.mark_done(stage, f"shard-{i:05d}", config_hash)
        if not all(rd.is_done(stage, f"shard-{i:05d}", config_hash) for i in range(len(shards))):
            return None
        rd.finish_once(stage, lambda: _counts(out, len(shards), token_set))
    except Exception as e:  # anything but an interrupt: the manifest must not say running
        rd.fail_stage(stage, str(e))
        raise
    return rd.stage_state(stage)["counts"]


def _counts(out: Path, n_shards: int, token_set: TokenSet) -> dict:
    per_shard = [json.loads((out / f"shard-{i:05d}.json").read_text()) for i in range(n_shards)]
    counts = {key: sum(s[key] for s in per_shard) for key in STATS}
    return {**counts, "shards": n_shards, "seq_len": token_set.seq_len}


def run(job: JobConfig, worker: Worker = Worker(), *, only: str | None = None, force: bool = False,
        show_progress: bool = True) -> dict[str, dict | None]:
    """Every token set of the job (or the one named `only`); counts per set, None for a set
    whose shards other workers are still writing."""
    sets = [t for t in job.tokenize if only is None or t.name == only]
    if not sets:
        known = ", ".join(t.name for t in job.tokenize) or "none"
        raise ConfigError(f"tokenize: no token set {only!r} in the job (token sets: {known})" if only
                          else "tokenize: the job lists no token sets (tokenize: [{name: ..., input: selected}])")
    return {t.name: run_set(job, t, worker, force=force, show_progress=show_progress) for t in sets}

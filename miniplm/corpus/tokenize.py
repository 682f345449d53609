"""`miniplm tokenize`: documents -> packed token shards for a tokenizer.

For each token set of the job, each input shard (selected documents, or a
split) becomes RUN_DIR/tokens/NAME/shard-NNNNN.arrow: its documents
tokenized, each followed by EOS, joined into one stream and cut into rows of
seq_len + 1 tokens, the rows shuffled with a generator seeded by (seed,
shard). The stream's tail that does not fill a row is counted, not hidden.
Shards are independent, so any worker (or array task) can take any of them.
A token set with `mix:` draws its rows from other token sets in given
shares (corpus/mixture.py), written once the sets it draws on are done.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from miniplm.config import JobConfig, TokenSet, tokenizer_name
from miniplm.corpus.mixture import STATS_FILE as MIXTURE_STATS
from miniplm.corpus.mixture import write_mixture
from miniplm.corpus.parquet import READ_BUFFER_BYTES, iter_batches
from miniplm.corpus.tokens import write_rows
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_write_json
from miniplm.models.loading import load_tokenizer, model_fingerprint
from miniplm.rundir import RunDir, shard_name
from miniplm.stage import Part, ShardedStage, StageRun, doc_shard_keys, only_one, run_sharded
from miniplm.workers import Worker

NAME = "tokenize"
STATS = ("documents", "tokens", "rows", "tail_tokens_dropped")


def part_for(token_set: TokenSet) -> Part:
    return Part(f"{NAME}/{token_set.name}", token_set)


def _input_stage(token_set: TokenSet) -> str:
    """The manifest entry of the stage that writes a token set's input."""
    if token_set.generated is not None:
        return token_set.input.replace("generated/", "generate/", 1)
    return "select" if token_set.input.startswith("selected") else "prepare"


def input_shards(rd: RunDir, token_set: TokenSet) -> tuple[list[Path], str]:
    """The input shards and the hash of the stage that made them."""
    stage = _input_stage(token_set)
    state = rd.stage_state(stage)
    if state.get("state") != "done":
        raise StageError(f"{rd.root}: tokenize {token_set.name!r} reads {token_set.input!r} documents; "
                         f"run `miniplm {stage.split('/')[0]}` first")
    if token_set.generated is not None:
        return sorted(rd.generated(token_set.generated).glob("shard-*.parquet")), state["config_hash"]
    if stage == "prepare":
        return rd.doc_shards(token_set.input), state["config_hash"]
    if token_set.input == "selected-random" and "random_baseline" not in state.get("counts", {}):
        raise ConfigError(f"tokenize.{token_set.name}: input selected-random needs select.random_baseline: true")
    return sorted(rd.selected(token_set.input).glob("shard-*.parquet")), state["config_hash"]


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
    write_rows(out / shard_name(index, ".arrow"), rows)
    stats = {"documents": len(token_lists), "tokens": sum(len(t) + 1 for t in token_lists),
             "rows": len(rows), "tail_tokens_dropped": tail}
    atomic_write_json(out / shard_name(index, ".json"), stats)
    return stats


def _component_hash(rd: RunDir, token_set: TokenSet, component: str) -> str:
    state = rd.stage_state(f"{NAME}/{component}")
    if state.get("state") != "done":
        raise StageError(f"{rd.root}: token set {token_set.name!r} mixes {component!r}, which is not tokenized yet; "
                         f"run `miniplm tokenize --only {component}` first")
    return state["config_hash"]


def _mix_waits(rd: RunDir, token_set: TokenSet) -> bool:
    """Whether a mix must wait for other workers still writing the sets it draws on (the last of them makes it)."""
    return token_set.mix is not None and any(rd.stage_state(f"{NAME}/{c}").get("state") == "running"
                                             for c in token_set.mix)


class Tokenize(ShardedStage):
    """One part per token set of the job (`tokenize/NAME`); its shards are its input's shards."""

    name = NAME
    summary = "pack documents into token rows for training"
    description = ("For each token set in the job's `tokenize:` list, tokenize its input (selected documents or a "
                   "split), join documents with EOS and cut the stream into shuffled rows of seq_len + 1 tokens in "
                   "RUN_DIR/tokens/NAME/shard-*.arrow (Arrow IPC, memory-mapped by the trainer).")
    sections = ("seed",)  # plus the token set, its tokenizer and the input stage's hash
    only = "token set"

    def applies(self, job: JobConfig) -> bool:
        return bool(job.tokenize)

    def parts(self, job: JobConfig, only: str | None = None) -> list[Part]:
        if not job.tokenize:
            raise ConfigError("tokenize: the job lists no token sets (tokenize: [{name: ..., input: selected}])")
        names = only_one("token set", [t.name for t in job.tokenize], only, NAME)
        # mixes last: they draw on the other sets' rows
        return [part_for(t) for t in sorted(job.tokenize, key=lambda t: t.mix is not None) if t.name in names]

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        token_set: TokenSet = part.item
        if token_set.mix is not None:
            return []  # written whole by the part's global step
        if token_set.generated is not None:
            if rd.stage_state(_input_stage(token_set)).get("state") != "done":
                return None
            return [shard_name(i, "") for i in range(len(input_shards(rd, token_set)[0]))]
        return doc_shard_keys(rd, "main" if token_set.input.startswith("selected") else token_set.input)

    def inputs(self, run: StageRun) -> list[str]:
        token_set: TokenSet = run.part.item
        if token_set.mix is not None:
            return [token_set.model_dump_json(), *(_component_hash(run.rd, token_set, c) for c in token_set.mix)]
        shards, input_hash = input_shards(run.rd, token_set)
        name = tokenizer_name(run.job, token_set)
        tokenizer = load_tokenizer(name)
        tokenizer.model_max_length = sys.maxsize  # documents are packed here, not truncated
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenize.{token_set.name}: tokenizer {name!r} has no EOS token to join documents with")
        run.shared.update(input_shards=shards, tokenizer=tokenizer)
        return [token_set.model_dump_json(), input_hash, model_fingerprint(name)]

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.tokens(run.part.item.name)]

    def shards(self, run: StageRun) -> list[str]:
        if run.part.item.mix is not None:
            return []
        return [shard_name(i, "") for i in range(len(run.shared["input_shards"]))]

    def global_step(self, run: StageRun) -> None:
        token_set: TokenSet = run.part.item
        if token_set.mix is not None:
            write_mixture(run.rd.tokens(token_set.name), {c: run.rd.tokens(c) for c in token_set.mix}, token_set.mix,
                          run.job.seed)

    def run_shard(self, run: StageRun, index: int) -> None:
        token_set: TokenSet = run.part.item
        tokenizer = run.shared["tokenizer"]
        tokenize_shard(run.job, token_set, tokenizer, tokenizer.eos_token_id, index, run.shared["input_shards"][index],
                       run.rd.tokens(token_set.name))

    def finish(self, run: StageRun) -> dict:
        token_set: TokenSet = run.part.item
        out = run.rd.tokens(token_set.name)
        if token_set.mix is not None:
            return json.loads((out / MIXTURE_STATS).read_text()) | {"seq_len": token_set.seq_len}
        per_shard = [json.loads((out / shard_name(i, ".json")).read_text()) for i in range(len(self.shards(run)))]
        counts = {key: sum(s[key] for s in per_shard) for key in STATS}
        return {**counts, "shards": len(per_shard), "seq_len": token_set.seq_len}

    def run(self, job: JobConfig, worker: Worker = Worker(), *, only: str | None = None, force: bool = False,
            show_progress: bool = True) -> dict[str, dict | None]:
        """Every token set of the job (or the one named `only`); counts per set, None for a set
        whose shards other workers are still writing."""
        rd = RunDir(job.run_dir)
        return {p.item.name: None if _mix_waits(rd, p.item) else
                run_sharded(self, job, p, worker, force=force, show_progress=show_progress)
                for p in self.parts(job, only)}

    def describe(self, job: JobConfig, result: dict[str, dict | None]) -> list[str]:
        lines = []
        for name, counts in result.items():
            if counts is None:
                lines.append(f"tokenize {name}: this worker's shards are written; other workers still have shards to write")
            elif "mix" in counts:
                parts = ", ".join(f"{c['rows']:,} of {c['rows_available']:,} rows of {n}"
                                  for n, c in counts["mix"].items())
                lines.append(f"tokenize {name}: {counts['rows']:,} rows of {counts['seq_len'] + 1} mixed from {parts} "
                             f"in {job.run_dir}/tokens/{name}")
            else:
                lines.append(f"tokenize {name}: {counts['documents']:,} documents, {counts['tokens']:,} tokens -> "
                             f"{counts['rows']:,} rows of {counts['seq_len'] + 1} ({counts['tail_tokens_dropped']:,} "
                             f"tail tokens left over) in {job.run_dir}/tokens/{name}")
        return lines


STAGE = Tokenize()

"""`miniplm tokenize`: documents -> packed token shards for a tokenizer.

For each token set of the job, each input shard (selected documents, or a
split) becomes RUN_DIR/tokens/NAME/shard-NNNNN.arrow: its documents
tokenized, each followed by EOS, joined into one stream and cut into rows of
seq_len + 1 tokens, the rows shuffled with a generator seeded by (seed,
shard). The stream's tail that does not fill a row is counted, not hidden.
Selected instances (score.unit: instance) are rows already: with the scoring
tokenizer each one is a row as it is, padded (corpus/instance_rows.py); with
another, their text is packed like documents.
Shards are independent, so any worker (or array task) can take any of them.
A token set with `mix:` draws its rows from other token sets in given
shares (corpus/mixture.py), written once the sets it draws on are done.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from miniplm import outputs
from miniplm.corpus.instance_rows import padded_rows, piece_token_lists
from miniplm.corpus.mixture import STATS_FILE as MIXTURE_STATS
from miniplm.corpus.mixture import write_mixture
from miniplm.corpus.parquet import READ_BUFFER_BYTES, iter_batches
from miniplm.corpus.row_sources import instance_sources, packed_sources, write_sources
from miniplm.corpus.tokens import write_rows
from miniplm.entry_stage import EntryStage
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_write_json
from miniplm.inputs import Input, Tokenizer
from miniplm.lookups import tokenizer_name
from miniplm.models.loading import load_tokenizer, resolve_model
from miniplm.models.text_tokens import token_ids
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.job import JobConfig
from miniplm.schema.proxy import SELECTED as PROXY_SELECTED
from miniplm.schema.select import RANDOM_CONTROLS
from miniplm.schema.tokenize import TokenSet
from miniplm.stage import Part, StageRun, doc_shard_keys, run_sharded
from miniplm.workers import Worker

NAME = "tokenize"
STATS = ("documents", "tokens", "rows", "tail_tokens_dropped", "pad_tokens")


def part_for(token_set: TokenSet, command: str | None = None) -> Part:
    return STAGE.part_for(token_set, command)


def input_shards(rd: RunDir, token_set: TokenSet) -> list[Path]:
    """The shards of the documents a token set reads (checked to be written)."""
    return document_shards(rd, token_set.input, f"tokenize {token_set.name!r}", f"tokenize.{token_set.name}")


def document_shards(rd: RunDir, name: str, reader: str, key: str) -> list[Path]:
    """The shards of the documents an input names (a split, a selection folder, generated/NAME),
    checked to be written; `reader` and `key` name who reads them in errors."""
    stage = outputs.document_input(name).stage
    state = rd.stage_state(stage)
    if state.get("state") != "done":
        raise StageError(f"{rd.root}: {reader} reads {name!r} documents; run `miniplm {stage.split('/')[0]}` first")
    if name.startswith(outputs.GENERATED):
        return sorted(rd.generated(name.removeprefix(outputs.GENERATED)).glob("shard-*.parquet"))
    if stage == "prepare":
        return rd.doc_shards(name)
    for control in RANDOM_CONTROLS:  # the job asks for it (`check` below), but select may have run without it
        if name == control.folder and control.entry not in state.get("counts", {}):
            raise ConfigError(
                f"{key}: input {control.folder} needs select.random_baseline: "
                f"{control.pool} (or both), and the selection there was made without it"
            )
    return sorted(rd.selected(name).glob("shard-*.parquet"))


def unwritten_input(job: JobConfig, name: str, label: str) -> None:
    """A ConfigError for documents the job's select never writes: a random control it is not asked
    for, or the proxy's selection without the proxy beside the LM scores. `label` names who reads
    them (`tokenize: input`, `export.NAME: from`)."""
    for control in RANDOM_CONTROLS:
        if name == control.folder and control not in job.select.random_controls:
            raise ConfigError(f"{label} {control.folder} needs select.random_baseline: {control.pool} (or both)")
    if name == PROXY_SELECTED and job.proxy_use != "beside":
        raise ConfigError(
            f"{label} {PROXY_SELECTED} is the selection from proxy scores beside the LM's; it needs "
            "`proxy: {use: beside}` (with use: instead the proxy's selection is `selected` itself)"
        )


def pack(
    token_lists: list[list[int]], eos: int | None, seq_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Rows of seq_len + 1 tokens from the stream of token lists (each followed by `eos`, unless
    None), shuffled; and the tail left over."""
    pieces = [np.asarray(t + ([eos] if eos is not None else []), dtype=np.int64) for t in token_lists]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    width = seq_len + 1
    n_rows = len(stream) // width
    rows = stream[: n_rows * width].reshape(n_rows, width)
    return rows[rng.permutation(n_rows)], len(stream) - n_rows * width


def tokenize_shard(
    job: JobConfig,
    token_set: TokenSet,
    tokenizer,
    eos: int,
    index: int,
    source: Path,
    out: Path,
    reading: str = "documents",
) -> dict:
    """reading: documents; instances (their tokens, one row each); or instance-text (their pieces).
    Beside the rows, where each comes from (corpus/row_sources.py); not for instance-text, whose
    pieces are tokenized apart from their documents, so no token range in a document names them."""
    rng = np.random.default_rng([job.seed, index])
    columns = {"documents": ["text", "id"], "instances": ["input_ids", "docs"], "instance-text": ["text", "docs"]}
    token_lists: list[list[int]] = []
    ids: list[str] = []
    pieces: list[list[dict]] = []
    units = pad = 0
    for batch in iter_batches(pq.ParquetFile(source, buffer_size=READ_BUFFER_BYTES), 1024, columns[reading]):
        units += batch.num_rows
        if reading == "documents":
            token_lists += [t + [eos] for t in token_ids(tokenizer, batch.column("text").to_pylist())]
            ids += batch.column("id").to_pylist()
        elif reading == "instances":
            held = zip(batch.column("input_ids").to_pylist(), batch.column("docs").to_pylist())
            kept = [(t, p) for t, p in held if len(t) > 1]
            token_lists += [t for t, _ in kept]  # one token predicts nothing
            pieces += [p for _, p in kept]
        else:
            texts, docs = batch.column("text").to_pylist(), batch.column("docs").to_pylist()
            token_lists += piece_token_lists(texts, docs, tokenizer, eos)
    # pack and the instances' shuffle draw their order first from a generator seeded like this one
    order = np.random.default_rng([job.seed, index])
    if reading == "instances":
        rows, pad = padded_rows(token_lists, token_set.seq_len + 1)
        rows, tail = rows[rng.permutation(len(rows))], 0
        sources = instance_sources(pieces)
    else:
        rows, tail = pack(token_lists, None, token_set.seq_len, rng)
        lengths = [len(t) for t in token_lists]
        sources = packed_sources(ids, lengths, token_set.seq_len + 1, len(rows)) if reading == "documents" else None
    if sources is not None:
        write_sources(out / shard_name(index, ".arrow"), sources.take(order.permutation(len(rows))))
    write_rows(out / shard_name(index, ".arrow"), rows)
    stats = {
        "documents": units,
        "tokens": sum(len(t) for t in token_lists),
        "rows": len(rows),
        "tail_tokens_dropped": tail,
        "pad_tokens": pad,
    }
    atomic_write_json(out / shard_name(index, ".json"), stats)
    return stats


def _mix_waits(rd: RunDir, token_set: TokenSet) -> bool:
    """Whether a mix must wait for other workers still writing the sets it draws on (the last of them makes it)."""
    return token_set.mix is not None and any(
        rd.stage_state(f"{NAME}/{c}").get("state") == "running" for c in token_set.mix
    )


def reading(job: JobConfig, token_set: TokenSet) -> str:
    """How a token set reads its input: documents; or, for selected instances, their tokens as rows
    (the tokenizer that scored them) or their text (another tokenizer)."""
    if job.score.unit != "instance" or not token_set.input.startswith("selected"):
        return "documents"
    same = token_set.tokenizer is None or (job.teacher is not None and token_set.tokenizer == job.teacher.model)
    return "instances" if same else "instance-text"


@dataclass
class TokenizeContext:
    """A token set's documents and the tokenizer that reads them (a mix needs neither)."""

    input_shards: list[Path]
    tokenizer: Any
    reading: str  # documents, instances or instance-text (see `reading`)


class Tokenize(EntryStage):
    """One part per token set of the job (`tokenize/NAME`); its shards are its input's shards."""

    name = NAME
    summary = "pack documents into token rows for training"
    description = (
        "For each token set in the job's `tokenize:` list, tokenize its input (selected documents or a "
        "split), join documents with EOS and cut the stream into shuffled rows of seq_len + 1 tokens in "
        "RUN_DIR/tokens/NAME/shard-*.arrow (Arrow IPC, memory-mapped by the trainer)."
    )
    sections = ("seed",)  # plus the token set, its tokenizer and the input stage's hash
    section = "tokenize"
    only = "token set"
    none = "tokenize: the job lists no token sets (tokenize: [{name: ..., input: selected}])"

    def entries_of(self, job: JobConfig) -> list[TokenSet]:
        return sorted(job.tokenize, key=lambda t: t.mix is not None)  # mixes last: they draw on the other sets' rows

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        """Its settings and its documents read with its tokenizer; or, for a mix, the sets it draws on."""
        token_set: TokenSet = part.item
        if token_set.mix is not None:
            return [
                token_set.model_dump_json(),
                *(outputs.tokens(c, why=f"token set {token_set.name!r} mixes {c!r}") for c in token_set.mix),
            ]
        reads: list[Input] = [token_set.model_dump_json(), outputs.document_input(token_set.input)]
        try:
            return reads + [Tokenizer("tokenizer", resolve_model(tokenizer_name(job, token_set)))]
        except ConfigError:
            return reads  # no tokenizer to name: `setup` refuses to run it, saying why

    def check(self, job: JobConfig) -> None:
        """Names that differ; inputs the job writes (a random control select draws, a generate entry);
        mixes of sets made from documents, with one seq_len and one tokenizer; selected instances in
        rows of their own length."""
        super().check(job)
        for token_set in job.tokenize:
            unwritten_input(job, token_set.input, "tokenize: input")
        generated = [g.name for g in job.generate]
        sets = {t.name: t for t in job.tokenize}
        for t in job.tokenize:
            for part in t.mix or {}:
                if part not in sets or sets[part].mix is not None:
                    raise ConfigError(
                        f"tokenize: {t.name!r} mixes {part!r}, which is no token set of the job made "
                        f"from documents (token sets: {', '.join(sets)})"
                    )
                if sets[part].seq_len != t.seq_len:
                    raise ConfigError(
                        f"tokenize: {t.name!r} (seq_len {t.seq_len}) mixes {part!r} (seq_len "
                        f"{sets[part].seq_len}); give them one seq_len"
                    )
            if len({sets[p].tokenizer for p in t.mix or {}}) > 1:
                raise ConfigError(f"tokenize: {t.name!r} mixes token sets made with different tokenizers")
            if t.mix is None and t.generated is not None and t.generated not in generated:
                raise ConfigError(
                    f"tokenize: {t.name!r} reads {t.input!r}, and the job's generate list has no "
                    f"{t.generated!r} (generate: {', '.join(generated) or 'none'})"
                )
        for token_set in job.tokenize:
            if reading(job, token_set) == "instances" and token_set.seq_len != job.score.max_length:
                raise ConfigError(
                    f"tokenize.{token_set.name}: the selected instances are rows of score.max_length + 1 = "
                    f"{job.score.max_length + 1} tokens, trained on as they are: set seq_len: {job.score.max_length} "
                    "(or give another tokenizer, which packs their text)"
                )

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        token_set: TokenSet = part.item
        if token_set.mix is not None:
            return []  # written whole by the part's global step
        if token_set.generated is not None:
            if rd.stage_state(outputs.document_input(token_set.input).stage).get("state") != "done":
                return None
            return [shard_name(i, "") for i in range(len(input_shards(rd, token_set)))]
        return doc_shard_keys(rd, "main" if token_set.input.startswith("selected") else token_set.input)

    def setup(self, run: StageRun) -> TokenizeContext | None:
        token_set: TokenSet = run.part.item
        if token_set.mix is not None:
            return None
        shards = input_shards(run.rd, token_set)
        name = tokenizer_name(run.job, token_set)
        tokenizer = load_tokenizer(name)
        tokenizer.model_max_length = sys.maxsize  # documents are packed here, not truncated
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenize.{token_set.name}: tokenizer {name!r} has no EOS token to join documents with")
        return TokenizeContext(shards, tokenizer, reading(run.job, token_set))

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.tokens(run.part.item.name)]

    def shards(self, run: StageRun) -> list[str]:
        if run.part.item.mix is not None:
            return []
        return [shard_name(i, "") for i in range(len(run.context.input_shards))]

    def global_step(self, run: StageRun) -> None:
        token_set: TokenSet = run.part.item
        if token_set.mix is not None:
            write_mixture(
                run.rd.tokens(token_set.name), {c: run.rd.tokens(c) for c in token_set.mix}, token_set.mix, run.job.seed
            )

    def run_shard(self, run: StageRun, index: int) -> None:
        token_set: TokenSet = run.part.item
        ctx: TokenizeContext = run.context
        tokenize_shard(
            run.job,
            token_set,
            ctx.tokenizer,
            ctx.tokenizer.eos_token_id,
            index,
            ctx.input_shards[index],
            run.rd.tokens(token_set.name),
            ctx.reading,
        )

    def finish(self, run: StageRun) -> dict:
        token_set: TokenSet = run.part.item
        out = run.rd.tokens(token_set.name)
        if token_set.mix is not None:
            return json.loads((out / MIXTURE_STATS).read_text()) | {"seq_len": token_set.seq_len}
        per_shard = [json.loads((out / shard_name(i, ".json")).read_text()) for i in range(len(self.shards(run)))]
        counts = {key: sum(s[key] for s in per_shard) for key in STATS}
        unit = "documents" if run.context.reading == "documents" else "instances"
        return {**counts, "shards": len(per_shard), "seq_len": token_set.seq_len, "unit": unit}

    def run(
        self,
        job: JobConfig,
        worker: Worker = Worker(),
        *,
        only: str | None = None,
        force: bool = False,
        show_progress: bool = True,
    ) -> dict[str, dict | None]:
        """Every token set of the job (or the one named `only`); counts per set, None for a set
        whose shards other workers are still writing."""
        rd = RunDir(job.run_dir)
        return {
            p.item.name: None
            if _mix_waits(rd, p.item)
            else run_sharded(self, job, p, worker, force=force, show_progress=show_progress)
            for p in self.parts(job, only)
        }

    def describe_entry(self, job: JobConfig, name: str, counts: dict) -> list[str]:
        if "mix" in counts:
            parts = ", ".join(f"{c['rows']:,} of {c['rows_available']:,} rows of {n}" for n, c in counts["mix"].items())
            return [
                f"tokenize {name}: {counts['rows']:,} rows of {counts['seq_len'] + 1} mixed from {parts} "
                f"in {job.run_dir}/tokens/{name}"
            ]
        left = (
            f"{counts['pad_tokens']:,} padding"
            if counts.get("pad_tokens")
            else f"{counts['tail_tokens_dropped']:,} tail tokens left over"
        )
        return [
            f"tokenize {name}: {counts['documents']:,} {counts.get('unit', 'documents')}, "
            f"{counts['tokens']:,} tokens -> {counts['rows']:,} rows of {counts['seq_len'] + 1} "
            f"({left}) in {job.run_dir}/tokens/{name}"
        ]


STAGE = Tokenize()

"""`miniplm export`: the refined corpus in the formats other trainers read.

For each entry of the job's `export:` list, each shard of its input (documents, selected
instances or a token set's rows) becomes one shard of the export in RUN_DIR/exports/NAME/, written
with the format's own library (export/megatron.py, olmo_npy.py, litdata_chunks.py, mds.py), and a
provenance shard beside it (export/provenance.py). Tokenizing, the costly part, is saved batch by
batch, so a worker killed inside a shard resumes at the first batch not saved; the format's files of
a shard are written whole from them. The end joins the shards where the format has one index for
all (litdata, MDS) and writes `export.json`: the format, the token type, the tokenizer, the counts
and how the format's trainer is pointed at it.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from miniplm import outputs
from miniplm.batch_checkpoints import BatchCheckpoints
from miniplm.corpus.tokenize import document_shards, unwritten_input
from miniplm.entry_stage import EntryStage
from miniplm.errors import ConfigError, StageError
from miniplm.export import provenance
from miniplm.export.formats import Format, remove_tmp, vocabulary_fits
from miniplm.export.litdata_chunks import FORMAT as LITDATA
from miniplm.export.mds import FORMAT as MDS
from miniplm.export.megatron import FORMAT as MEGATRON
from miniplm.export.olmo_npy import FORMAT as OLMO_NPY
from miniplm.export.report import DESCRIPTION, write_report
from miniplm.export.sequences import SCHEMA, arrays, document_batches, instances, token_rows
from miniplm.files import atomic_write_json
from miniplm.inputs import Input, Tokenizer
from miniplm.lookups import tokenizer_name
from miniplm.models.loading import load_tokenizer, resolve_model
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.export import ExportEntry
from miniplm.schema.job import JobConfig
from miniplm.stage import Part, StageRun, doc_shard_keys

NAME = "export"
FORMATS: dict[str, Format] = {f.name: f for f in (MEGATRON, OLMO_NPY, LITDATA, MDS)}


def reading(job: JobConfig, entry: ExportEntry) -> str:
    """tokens (a token set's rows), instances (selected instances, as scoring cut them) or documents."""
    if entry.token_set is not None:
        return "tokens"
    if job.score.unit == "instance" and entry.source.startswith("selected"):
        return "instances"
    return "documents"


def tokenizer_of(job: JobConfig, entry: ExportEntry) -> str:
    """The tokenizer of the exported tokens: the token set's, the entry's, else the teacher's."""
    if entry.token_set is not None:
        sets = {t.name: t for t in job.tokenize}
        return tokenizer_name(job, sets[entry.token_set])
    if entry.tokenizer is not None:
        return entry.tokenizer
    if job.teacher is None:
        raise ConfigError(f"export.{entry.name}: no tokenizer given and no teacher to take it from")
    return job.teacher.model


@dataclass
class ExportContext:
    """An export's input shards, how they are read, its format and the tokenizer's facts."""

    shards: list[Path]
    reading: str
    format: Format
    dtype: str
    tokenizer: Any
    tokenizer_name: str


class Export(EntryStage):
    """One part per export of the job (`export/NAME`); its shards are its input's shards."""

    name = NAME
    summary = "write the refined corpus for other trainers (Megatron, OLMo-core, litgpt, llm-foundry)"
    description = (
        "For each entry of the job's `export:` list, write its input (selected documents or instances, a split, "
        "a generated corpus, or a token set's rows as they are) in RUN_DIR/exports/NAME/ in the format a trainer "
        "reads: megatron (.bin + .idx), olmo-npy, litdata or mds, each with the format's own library, and a "
        "Parquet provenance sidecar tracing each sequence to its source documents."
    )
    sections = ()  # the entry itself, its input's hash and its tokenizer (reads)
    section = "export"
    only = "export"
    none = "export: the job lists no exports (export: [{name: ..., from: selected, format: megatron}])"

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        entry: ExportEntry = part.item
        if entry.token_set is not None:
            return [entry.model_dump_json(), outputs.tokens(entry.token_set, why=f"export {entry.name!r} writes it")]
        reads: list[Input] = [entry.model_dump_json(), outputs.document_input(entry.source)]
        try:
            return reads + [Tokenizer("tokenizer", resolve_model(tokenizer_of(job, entry)))]
        except ConfigError:
            return reads  # no tokenizer to name: `check` says so

    def check(self, job: JobConfig) -> None:
        """Names that differ; a `from` that names something the job writes; instances exported with
        the tokenizer that cut them."""
        super().check(job)
        sets = [t.name for t in job.tokenize]
        generated = [g.name for g in job.generate]
        for entry in job.export:
            key = f"export.{entry.name}"
            if entry.token_set is not None and entry.token_set not in sets:
                raise ConfigError(
                    f"{key}: from {entry.source!r} names no token set of the job "
                    f"(token sets: {', '.join(sets) or 'none'})"
                )
            if (
                entry.source.startswith(outputs.GENERATED)
                and entry.source.removeprefix(outputs.GENERATED) not in generated
            ):
                raise ConfigError(
                    f"{key}: from {entry.source!r} names no corpus of the job's generate list "
                    f"(generate: {', '.join(generated) or 'none'})"
                )
            unwritten_input(job, entry.source, f"{key}: from")
            if reading(job, entry) == "instances" and entry.tokenizer not in (None, job.teacher and job.teacher.model):
                raise ConfigError(
                    f"{key}: selected instances are exported as the teacher's tokenizer cut them; to write them with "
                    f"tokenizer {entry.tokenizer!r}, make a token set with it (tokenize: [{{name: ..., input: "
                    f"{entry.source}, tokenizer: ...}}]) and export that (from: tokens/NAME)"
                )
            fmt = FORMATS[entry.format]
            if entry.dtype != "auto" and entry.dtype not in fmt.dtypes:
                raise ConfigError(f"{key}.dtype: {entry.format} takes {' or '.join(fmt.dtypes)} (got {entry.dtype})")
            if entry.token_set is None:
                tokenizer_of(job, entry)

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        entry: ExportEntry = part.item
        if entry.token_set is not None:
            if rd.stage_state(f"tokenize/{entry.token_set}").get("state") != "done":
                return None
            return [shard_name(i, "") for i in range(len(list(rd.tokens(entry.token_set).glob("shard-*.arrow"))))]
        if entry.source.startswith(outputs.GENERATED):
            if rd.stage_state(outputs.document_input(entry.source).stage).get("state") != "done":
                return None
            return [shard_name(i, "") for i in range(len(document_shards(rd, entry.source, "", "")))]
        return doc_shard_keys(rd, "main" if entry.source.startswith("selected") else entry.source)

    def setup(self, run: StageRun) -> ExportContext:
        """The input written, the format's library installed, a token type that holds the vocabulary."""
        entry: ExportEntry = run.part.item
        key = f"export.{entry.name}"
        how = reading(run.job, entry)
        if how == "tokens":
            state = run.rd.stage_state(f"tokenize/{entry.token_set}")
            if state.get("state") != "done":
                raise StageError(
                    f"{run.rd.root}: export {entry.name!r} writes token set {entry.token_set!r}; "
                    f"run `miniplm tokenize --only {entry.token_set}` first"
                )
            shards = sorted(run.rd.tokens(entry.token_set).glob("shard-*.arrow"))
        else:
            shards = document_shards(run.rd, entry.source, f"export {entry.name!r}", key)
        fmt = FORMATS[entry.format]
        fmt.library()
        name = tokenizer_of(run.job, entry)
        tokenizer = load_tokenizer(name)
        tokenizer.model_max_length = sys.maxsize  # documents are written whole, not truncated
        if how == "documents" and tokenizer.eos_token_id is None:
            raise ConfigError(f"{key}: tokenizer {name!r} has no EOS token to end documents with")
        vocab = len(tokenizer)
        dtype = fmt.auto_dtype(vocab) if entry.dtype == "auto" else entry.dtype
        if not vocabulary_fits(dtype, vocab):
            raise ConfigError(
                f"{key}.dtype: tokenizer {name!r} has {vocab:,} ids, more than {dtype} holds; "
                f"use {fmt.dtypes[-1]} (or dtype: auto)"
            )
        return ExportContext(shards, how, fmt, dtype, tokenizer, name)

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.export(run.part.item.name)]

    def shards(self, run: StageRun) -> list[str]:
        return [shard_name(i, "") for i in range(len(run.context.shards))]

    def _sequences(self, run: StageRun, index: int) -> pa.Table:
        ctx: ExportContext = run.context
        source = ctx.shards[index]
        if ctx.reading == "tokens":
            return token_rows(source)
        if ctx.reading == "instances":
            return instances(source)
        saved = BatchCheckpoints(self._tokenized(run, index), run.config_hash)
        done, tables = saved.load_tables()
        for i, table in enumerate(document_batches(source, ctx.tokenizer, ctx.tokenizer.eos_token_id, done), done):
            saved.save_table(i, i, table)
            tables.append(table)
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

    def _tokenized(self, run: StageRun, index: int) -> Path:
        """Where a shard's tokenized batches are saved until its files are written."""
        return run.rd.work(run.name) / "tokenized" / shard_name(index, "")

    def run_shard(self, run: StageRun, index: int) -> None:
        ctx: ExportContext = run.context
        out = run.rd.export(run.part.item.name)
        out.mkdir(parents=True, exist_ok=True)
        table = self._sequences(run, index)
        sequences = arrays(table)
        placed = ctx.format.write_shard(out, index, sequences, ctx.dtype) if sequences else []
        provenance.write(out, index, placed, [len(s) for s in sequences], table)
        shutil.rmtree(self._tokenized(run, index), ignore_errors=True)  # written: its checkpoints are spent

    def finish(self, run: StageRun) -> dict:
        ctx: ExportContext = run.context
        entry: ExportEntry = run.part.item
        out = run.rd.export(entry.name)
        out.mkdir(parents=True, exist_ok=True)
        remove_tmp(out)  # what writers killed midway left (every shard is written whole by now)
        ctx.format.finish(out, len(ctx.shards), stamp=run.config_hash)
        rows = provenance.read(out)
        per_file: dict[str, int] = {}
        for file, length in zip(rows["file"].to_pylist(), rows["length"].to_pylist()):
            per_file[file] = per_file.get(file, 0) + length
        counts = {
            "format": entry.format,
            "from": entry.source,
            "sequences": rows.num_rows,
            "tokens": sum(per_file.values()),
            "shards": len(ctx.shards),
            "files": len(per_file),
            "without_sources": rows["source_ids"].null_count,
            "dtype": ctx.dtype,
        }
        files = sorted(per_file)
        description = counts | {
            "unit": {"tokens": "token-set rows", "instances": "instances", "documents": "documents"}[ctx.reading],
            "tokenizer": ctx.tokenizer_name,
            "vocab_size": len(ctx.tokenizer),
            "eos_token_id": ctx.tokenizer.eos_token_id,
            "files": {f: per_file[f] for f in files},  # tokens in each
            "train": ctx.format.train_hint(Path("."), files, [per_file[f] for f in files]),  # paths from here
        }
        atomic_write_json(out / DESCRIPTION, description)
        write_report(run.rd, [e.name for e in run.job.export], finishing=entry.name)
        return counts

    def describe_entry(self, job: JobConfig, name: str, counts: dict) -> list[str]:
        out = RunDir(job.run_dir).export(name)
        lines = [
            f"export {name}: {counts['sequences']:,} sequences, {counts['tokens']:,} tokens from {counts['from']} as "
            f"{counts['format']} ({counts['dtype']}) in {out}, provenance in {out / provenance.FOLDER}"
        ]
        description = json.loads((out / DESCRIPTION).read_text())
        files = description["files"]
        lines.append(
            f"export {name}: train with {FORMATS[counts['format']].train_hint(out, list(files), list(files.values()))}"
        )
        if counts["without_sources"]:
            lines.append(
                f"export {name}: {counts['without_sources']:,} sequences have no sources in their provenance: their "
                "token set (or a set it mixes) was packed from instance text with another tokenizer, whose pieces no "
                "token range of a document names, or written before token sets recorded their sources"
            )
        return lines

    def report(self, job: JobConfig, rd: RunDir) -> None:
        write_report(rd, [e.name for e in job.export])

    def warnings(self, job: JobConfig, result: dict) -> list[str]:
        return [
            f"export {k.removeprefix('export/')}: nothing was exported"
            for k, c in result.items()
            if c and not c["sequences"]
        ]


STAGE = Export()
"""`export:`: the refined corpus written for other trainers, with provenance."""

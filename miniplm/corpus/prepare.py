"""`miniplm prepare`: raw sources -> deduplicated document shards per split.

Two steps, so that the work scales and a killed run resumes:

1. Per source unit (a file, a batch of text files, or a dataset), in
   parallel processes: read, check, give each document an id, a dedup key
   and a split, and write a *part* file plus its rejects and counts. A unit
   whose completion marker exists is not read again.
2. Once every part exists: drop exact duplicates (first occurrence in input
   order wins) and repeated ids, looking at keys only, then stream the parts
   into `docs/{split}/shard-NNNNN.parquet` and write `docs/stats.json` and
   `docs/rejects.jsonl`.

Input order, not worker timing, decides everything, so any number of worker
processes (or SLURM array tasks) gives byte-identical shards.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from miniplm.corpus.documents import BAD_INPUT_REASONS, assign_split, dedup_key, generated_id, normalise, problem_with
from miniplm.corpus.near_duplicates import Bands, band_columns, near_copies
from miniplm.corpus.parquet import READ_BUFFER_BYTES, ShardWriter, iter_batches
from miniplm.corpus.readers import Rejection, read_input
from miniplm.errors import StageError
from miniplm.files import atomic_path, atomic_write_json
from miniplm.inputs import Files, Input
from miniplm.lookups import expand_input
from miniplm.paths import walk_files
from miniplm.rundir import SPLITS, RunDir
from miniplm.schema.corpus import CorpusConfig
from miniplm.schema.job import JobConfig
from miniplm.stage import Part, ShardedStage, StageRun, Step

NAME = "prepare"
TEXT_FILES_PER_UNIT = 2000
PART_ROWS = 2000
PART_BYTES = 32 << 20
PROGRESS_EVERY = 100  # documents between progress-bar updates from a worker


class PrepareError(StageError):
    """Bad input under `corpus.on_error: fail`; the message names the file and line."""


@dataclass(frozen=True)
class Unit:
    index: int
    input_index: int
    paths: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"part-{self.index:05d}"


def plan_units(corpus: CorpusConfig) -> list[Unit]:
    """The work items of step 1, in input order."""
    groups: list[tuple[int, tuple[str, ...]]] = []
    for i, spec in enumerate(corpus.inputs):
        files = expand_input(spec)
        if spec.format in ("hf_disk", "hf_hub"):
            groups.append((i, tuple(files)))
        elif spec.format == "text":
            files = files[: spec.limit]  # a text file is one record
            groups += [(i, tuple(files[k : k + TEXT_FILES_PER_UNIT])) for k in range(0, len(files), TEXT_FILES_PER_UNIT)]
        else:
            groups += [(i, (f,)) for f in files]
    return [Unit(n, i, paths) for n, (i, paths) in enumerate(groups)]


def metadata_columns(corpus: CorpusConfig) -> list[str]:
    names = [name for spec in corpus.inputs for name in spec.metadata_fields]
    return [n for n in dict.fromkeys(names) if n not in ("id", "text", "source")]


def shard_schema(corpus: CorpusConfig) -> pa.Schema:
    # Metadata columns are strings (JSON for non-string values): inputs of
    # different formats cannot be trusted to agree on a type.
    return pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())]
                     + [(name, pa.string()) for name in metadata_columns(corpus)])


def _band_names(corpus: CorpusConfig) -> list[str]:
    return band_columns(corpus.near_duplicates) if corpus.near_duplicates is not None else []


def _part_schema(corpus: CorpusConfig) -> pa.Schema:
    extra = [("split", pa.string()), ("text_hash", pa.binary(16)), ("_file", pa.string()), ("_line", pa.int64())]
    bands = [(name, pa.uint64()) for name in _band_names(corpus)]
    return pa.schema(list(shard_schema(corpus)) + extra + bands)


def _meta_value(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


# ---------------------------------------------------------------- step 1: one unit


class _Part:
    """Rows of one unit's part file, buffered into row groups."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.schema = schema
        # scratch, read once: fast compression beats small files here
        self.writer = pq.ParquetWriter(path, schema, compression="lz4")
        self.rows: dict[str, list] = {name: [] for name in schema.names}
        self.buffered_bytes = 0
        self.total = 0

    def add(self, row: dict[str, Any], size: int) -> None:
        for name, values in self.rows.items():
            values.append(row.get(name))
        self.buffered_bytes += size
        self.total += 1
        if len(self.rows["id"]) >= PART_ROWS or self.buffered_bytes >= PART_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.rows["id"]:
            self.writer.write_table(pa.table(self.rows, schema=self.schema))
            self.rows = {name: [] for name in self.schema.names}
            self.buffered_bytes = 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


_progress_counter: Any = None


def _init_worker(counter: Any, parent: int) -> None:
    global _progress_counter
    _progress_counter = counter
    _die_with(parent)


def _die_with(parent: int) -> None:
    """End this worker when the process that started it ends, however it ends (SIGTERM and
    SIGKILL included), instead of reading on, orphaned, to the end of its unit."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(1)


def _report_progress(n: int) -> None:
    if _progress_counter is not None:
        with _progress_counter.get_lock():
            _progress_counter.value += n


def process_unit(job: JobConfig, unit: Unit, config_hash: str, progress: Callable[[int], None] | None = None) -> dict:
    """Step 1 for one unit: write its part, rejects and counts, then its completion marker."""
    corpus = job.corpus
    spec = corpus.inputs[unit.input_index]
    rd = RunDir(job.run_dir)
    work = rd.work(NAME)
    work.mkdir(parents=True, exist_ok=True)
    progress = progress or _report_progress
    schema = _part_schema(corpus)
    meta_names = metadata_columns(corpus)
    default_source = spec.source_name
    rejected: Counter[str] = Counter()
    filtered: dict[str, dict[str, Counter[str]]] = {}  # split -> source -> reason
    chars = Counter(read=0, rejected=0)
    read = 0
    quality = None
    if corpus.quality is not None:
        from miniplm.corpus.quality import QualityFilter  # datatrove takes a second to import

        quality = QualityFilter(corpus.quality)
    bands = Bands(corpus.near_duplicates, job.seed) if corpus.near_duplicates is not None else None
    band_names = _band_names(corpus)

    with atomic_path(work / f"{unit.key}.parquet") as part_tmp, \
            atomic_path(work / f"{unit.key}.rejects.jsonl") as rejects_tmp, \
            open(rejects_tmp, "wb") as rejects_file:
        part = _Part(part_tmp, schema)

        def reject(r: Rejection, **document: str) -> None:
            if corpus.on_error == "fail" and r.reason in BAD_INPUT_REASONS:
                where = f"{r.file}:{r.line}" if r.line else r.file
                raise PrepareError(f"{where}: {r.reason}: {r.detail}")
            rejected[r.reason] += r.count
            record = dict(file=r.file, line=r.line, reason=r.reason, detail=r.detail, count=r.count, **document)
            rejects_file.write(orjson.dumps(record) + b"\n")

        for path, item in read_input(spec, unit.paths, corpus.max_chars):
            if spec.limit is not None and read >= spec.limit and spec.format != "text":
                break
            if isinstance(item, Rejection):
                read += item.count
                reject(item)
                continue
            read += 1
            if read % PROGRESS_EVERY == 0:
                progress(PROGRESS_EVERY)
            if isinstance(item.text, str):
                chars["read"] += len(item.text)
            problem = problem_with(item, needs_id=spec.id_field is not None, max_chars=corpus.max_chars)
            if problem:
                if isinstance(item.text, str):
                    chars["rejected"] += len(item.text)
                reject(Rejection(problem[0], path, item.line, problem[1]))
                continue
            where = f"{path}:{spec.split}" if spec.format in ("hf_disk", "hf_hub") else path
            doc_id = str(item.id) if spec.id_field else generated_id(where, item.line)
            source = str(item.source) if item.source is not None else default_source
            split = assign_split(doc_id, job.seed, corpus.reference_fraction, corpus.heldout_fraction)
            verdict = quality(item.text) if quality is not None else None
            if verdict:
                chars["rejected"] += len(item.text)
                filtered.setdefault(split, {}).setdefault(source, Counter())[verdict[0]] += 1
                reject(Rejection(verdict[0], path, item.line, verdict[1]), id=doc_id, source=source, split=split)
                continue
            normalised = normalise(item.text)
            row = {
                "id": doc_id,
                "text": item.text,
                "source": source,
                "split": split,
                "text_hash": dedup_key(normalised),
                "_file": path,
                "_line": item.line,
                **{name: _meta_value(item.meta.get(name)) for name in meta_names},
                **(dict(zip(band_names, bands(normalised))) if bands is not None else {}),
            }
            part.add(row, len(item.text))
        part.close()
        progress(read % PROGRESS_EVERY)

    stats = {"read": read, "accepted": part.total, "rejected": dict(sorted(rejected.items())), "chars": dict(chars),
             "filtered": filtered}
    atomic_write_json(work / f"{unit.key}.stats.json", stats)
    rd.mark_done(NAME, unit.key, config_hash)
    return stats


def _run_units(job: JobConfig, units: list[Unit], config_hash: str, show_progress: bool) -> None:
    processes = min(job.corpus.num_workers or os.cpu_count() or 1, len(units))
    bar = tqdm(desc="prepare", unit="doc", disable=not show_progress or not units, dynamic_ncols=True)
    finished_units = 0

    def unit_finished() -> None:
        nonlocal finished_units
        finished_units += 1
        bar.set_postfix_str(f"{finished_units}/{len(units)} sources")

    try:
        if processes <= 1:
            for unit in units:
                process_unit(job, unit, config_hash, progress=bar.update)
                unit_finished()
            return
        # spawn, not fork: polars and pyarrow keep thread pools that fork would copy mid-use.
        ctx = mp.get_context("spawn")
        counter = ctx.Value("q", 0)
        with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_init_worker,
                                 initargs=(counter, os.getpid())) as pool:
            pending = {pool.submit(process_unit, job, unit, config_hash) for unit in units}
            try:
                while pending:
                    finished, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        future.result()  # re-raise a worker's error here
                        unit_finished()
                    bar.update(counter.value - bar.n)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # stop at once rather than finish every unit
                raise
    finally:
        bar.close()


# ---------------------------------------------------------------- step 2: global


KEEP, DUPLICATE, REPEATED_ID, NEAR_DUPLICATE = range(4)
DROPS = {DUPLICATE: "duplicates", REPEATED_ID: "duplicate_id", NEAR_DUPLICATE: "near_duplicate"}


def _drop_status(parts: list[Path], corpus: CorpusConfig) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Per row of the concatenated parts: its status (KEEP or why it is dropped), and for near-copies
    the row of the document they copy (else -1); with the ids of the rows copied.

    Reads only the keys (16-byte hashes, ids, band hashes), never the text. Exact duplicates go
    first, then repeated ids, then near-copies among what is left.
    """
    keys = pl.concat([pl.scan_parquet(p).select("text_hash", "id") for p in parts]).with_row_index("row").collect()
    status = np.zeros(keys.height, dtype=np.int8)
    duplicate = ~keys["text_hash"].is_first_distinct()
    status[duplicate.to_numpy()] = DUPLICATE
    survivors = keys.filter(~duplicate)
    status[survivors.filter(~pl.col("id").is_first_distinct())["row"].to_numpy()] = REPEATED_ID
    copy_of = np.full(keys.height, -1, dtype=np.int64)
    if corpus.near_duplicates is not None:
        def read_band(name: str) -> np.ndarray:
            return pl.concat([pl.scan_parquet(p).select(name) for p in parts]).collect()[name].to_numpy()

        copy_of = near_copies(read_band, _band_names(corpus), status == KEEP)
        status[copy_of >= 0] = NEAR_DUPLICATE
    copied = np.unique(copy_of[copy_of >= 0])
    return status, copy_of, dict(zip(copied.tolist(), keys["id"].gather(copied).to_list()))


def _finalize(job: JobConfig, rd: RunDir, units: list[Unit]) -> dict:
    work = rd.work(NAME)
    work.mkdir(parents=True, exist_ok=True)
    parts = [work / f"{u.key}.parquet" for u in units]
    unit_stats = [json.loads((work / f"{u.key}.stats.json").read_text()) for u in units]
    for split in SPLITS:  # a killed earlier finalize may have left some shards
        for stale in (rd.docs / split).glob("*shard-*"):
            stale.unlink()

    status, copy_of, copied_ids = _drop_status(parts, job.corpus) if parts else (np.zeros(0, np.int8), None, {})
    schema = shard_schema(job.corpus)
    writers = {s: ShardWriter(schema, lambda i, s=s: rd.doc_shard(s, i), job.corpus.docs_per_shard) for s in SPLITS}
    kept: Counter[str] = Counter()
    kept_chars: Counter[str] = Counter()
    by_source: dict[str, Counter[str]] = {}
    offset = 0
    with _Drops(work / "global.rejects.jsonl", _merged_filter_counts(unit_stats), copy_of, copied_ids) as drops:
        for part in parts:
            for batch in iter_batches(pq.ParquetFile(part, buffer_size=READ_BUFFER_BYTES), 4096):
                table = pa.Table.from_batches([batch])
                st = status[offset : offset + table.num_rows]
                drops.add(table, st, offset)
                offset += table.num_rows
                good = table.filter(pa.array(st == KEEP))
                for split in SPLITS:
                    rows = good.filter(pc.equal(good["split"], split))
                    if rows.num_rows:
                        writers[split].write(rows)
                        kept[split] += rows.num_rows
                        kept_chars[split] += pc.sum(pc.utf8_length(rows["text"])).as_py()
                        for source, n in Counter(rows["source"].to_pylist()).items():
                            by_source.setdefault(source, Counter())[f"kept_{split}"] += n
    for w in writers.values():
        w.close()

    repeated = drops.first_repeated_id
    if repeated and job.corpus.on_error == "fail":
        raise PrepareError(f"{repeated['file']}:{repeated['line']}: duplicate_id: {repeated['detail']}")

    with atomic_path(rd.doc_rejects) as tmp, open(tmp, "wb") as out:
        for name in [f"{u.key}.rejects.jsonl" for u in units] + [drops.path.name]:
            with open(work / name, "rb") as f:
                shutil.copyfileobj(f, out)

    rejected: Counter[str] = Counter()
    chars = Counter()
    for s in unit_stats:
        rejected.update(s["rejected"])
        chars.update(s["chars"])
    rejected.update(drops.rejected)
    chars["rejected"] += drops.rejected_chars
    for sources in drops.by_split.values():
        for source, reasons in sources.items():
            by_source.setdefault(source, Counter()).update(reasons)
    stats = {
        "documents_read": sum(s["read"] for s in unit_stats),
        "kept": {s: kept[s] for s in SPLITS},
        "kept_total": sum(kept.values()),
        "duplicates": drops.duplicates,
        "rejected": dict(sorted(rejected.items())),
        "rejected_total": sum(rejected.values()),
        "characters": {
            "read": chars["read"],
            "kept": {s: kept_chars[s] for s in SPLITS},
            "duplicates": drops.duplicate_chars,
            "rejected": chars["rejected"],
        },
        "shards": {s: writers[s].shards_written for s in SPLITS},
        "sources": {src: dict(sorted(c.items())) for src, c in sorted(by_source.items())},
        "inputs": [{"path": spec.path,
                    "read": sum(st["read"] for u, st in zip(units, unit_stats) if u.input_index == i),
                    "accepted": sum(st["accepted"] for u, st in zip(units, unit_stats) if u.input_index == i)}
                   for i, spec in enumerate(job.corpus.inputs)],
        # what each filter dropped (duplicates included), by the split the document's id falls in
        "dropped_by_split": {split: {src: dict(sorted(c.items())) for src, c in sorted(sources.items())}
                             for split, sources in sorted(drops.by_split.items())},
    }
    atomic_write_json(rd.doc_stats, stats)
    return stats


class _Drops:
    """What the global step drops, batch by batch: counts per split and source, and a rejects line
    (written as it goes) for each repeated id and near-copy."""

    def __init__(self, path: Path, by_split: dict[str, dict[str, Counter[str]]], copy_of: np.ndarray | None,
                 copied_ids: dict[int, str]):
        self.path = path
        self.by_split = by_split  # split -> source -> reason, step 1's filters included
        self.copy_of, self.copied_ids = copy_of, copied_ids
        self.duplicates = self.duplicate_chars = self.rejected_chars = 0
        self.rejected: Counter[str] = Counter()
        self.first_repeated_id: dict | None = None

    def __enter__(self) -> "_Drops":
        self.file = open(self.path, "wb")
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def add(self, table: pa.Table, status: np.ndarray, offset: int) -> None:
        for code, label in DROPS.items():
            where = np.flatnonzero(status == code)
            if not len(where):
                continue
            dropped = table.take(pa.array(where))
            for split, source in zip(dropped["split"].to_pylist(), dropped["source"].to_pylist()):
                self.by_split.setdefault(split, {}).setdefault(source, Counter())[label] += 1
            if code == DUPLICATE:  # counted, not listed
                self.duplicates += dropped.num_rows
                self.duplicate_chars += pc.sum(pc.utf8_length(dropped["text"])).as_py() or 0
                continue
            rows = dropped.select(["_file", "_line", "id", "source", "split", "text"]).to_pylist()
            for row, at in zip(rows, offset + where):
                detail = (f"a near-copy of document {self.copied_ids[self.copy_of[at]]!r}" if code == NEAR_DUPLICATE
                          else f"id {row['id']!r} already used")
                record = dict(file=row["_file"], line=row["_line"], reason=label, detail=detail, count=1,
                              id=row["id"], source=row["source"], split=row["split"], chars=len(row["text"]))
                self.file.write(orjson.dumps(record) + b"\n")
                self.rejected[label] += 1
                self.rejected_chars += record["chars"]
                if code == REPEATED_ID and self.first_repeated_id is None:
                    self.first_repeated_id = record


def _merged_filter_counts(unit_stats: list[dict]) -> dict[str, dict[str, Counter[str]]]:
    merged: dict[str, dict[str, Counter[str]]] = {}
    for s in unit_stats:
        for split, sources in s.get("filtered", {}).items():
            for source, reasons in sources.items():
                merged.setdefault(split, {}).setdefault(source, Counter()).update(reasons)
    return merged


# ---------------------------------------------------------------- the stage


def read_stats(run_dir: str | os.PathLike) -> dict:
    return json.loads(RunDir(run_dir).doc_stats.read_text())


class Prepare(ShardedStage):
    """Its shards are the input units; the worker that completes the set writes the document shards."""

    name = NAME
    summary = "read raw sources into deduplicated document shards per split"
    description = ("Read the job's corpus.inputs, drop bad, empty and duplicate documents, near-copies and noise "
                   "(corpus.quality: Gopher's rules; corpus.near_duplicates: MinHash), each counted by reason, and "
                   "write RUN_DIR/docs/{main,reference,heldout}/shard-*.parquet with stats.json and rejects.jsonl.")
    sections = ("seed", "corpus")
    unit = "input units"

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str]:
        return [u.key for u in plan_units(job.corpus)]

    def reads_from(self, job: JobConfig, step: Step) -> list[str]:
        return []

    def slurm_arguments(self) -> str:
        return 'corpus.num_workers="${SLURM_CPUS_PER_TASK:-1}"'  # one process per CPU of the task

    def inputs(self, run: StageRun) -> list[Input]:
        # Every source by content: an input edited between two workers, or across a resume,
        # must not end up half old, half new in the shards.
        reads: list[Input] = []
        for i, spec in enumerate(run.job.corpus.inputs):
            if spec.format == "hf_disk":
                reads.append(Files(f"corpus.inputs.{i}", tuple(walk_files(spec.path))))
            elif spec.format != "hf_hub":  # a hub dataset is known by its name alone
                reads.append(Files(f"corpus.inputs.{i}", tuple(expand_input(spec))))
        return reads

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.docs]

    def shards(self, run: StageRun) -> list[str]:
        return [u.key for u in self._units(run)]

    def _units(self, run: StageRun) -> list[Unit]:
        if "units" not in run.shared:
            run.shared["units"] = plan_units(run.job.corpus)
        return run.shared["units"]

    def run_shards(self, run: StageRun, todo: list[int]) -> None:
        units = self._units(run)
        _run_units(run.job, [units[i] for i in todo], run.config_hash, run.show_progress)

    def finish(self, run: StageRun) -> dict:
        stats = _finalize(run.job, run.rd, self._units(run))
        return {k: stats[k] for k in ("documents_read", "kept", "duplicates", "rejected_total", "shards")}

    def result(self, run: StageRun) -> dict:
        return read_stats(run.rd.root)

    def describe(self, job: JobConfig, result: dict | None) -> list[str]:
        if result is None:
            return [f"{NAME}: this worker's share is done; the last worker to finish completes the stage"]
        return [f"prepare: documents in {job.run_dir}/docs", *summary_lines(result)]

    def warnings(self, job: JobConfig, result: dict) -> list[str]:
        found = [f"prepare: corpus.inputs.{i} ({given['path']}) gave no documents: "
                 + (f"all {given['read']:,} records read were rejected" if given["read"] else "no records in it")
                 for i, given in enumerate(result.get("inputs", [])) if not given["accepted"]]
        if not result["kept_total"]:
            found.append(f"prepare: no document was kept of {result['documents_read']:,} read (rejected "
                         f"{result['rejected_total']:,}, duplicates {result['duplicates']:,}); see "
                         f"{job.run_dir}/docs/stats.json and rejects.jsonl")
        return found


STAGE = Prepare()


def summary_lines(stats: dict) -> list[str]:
    kept, chars = stats["kept"], stats["characters"]
    reason_width = max([14, *map(len, stats["rejected"])])  # the filters' reasons are long
    return [
        f"documents read   {stats['documents_read']:>12,}",
        *(f"  kept {s:<11} {kept[s]:>12,}  ({chars['kept'][s]:,} chars, {stats['shards'][s]} shards)" for s in SPLITS),
        f"  duplicates     {stats['duplicates']:>12,}",
        *(f"  rejected {r:<{reason_width}} {n:>8,}" for r, n in stats["rejected"].items()),
    ]

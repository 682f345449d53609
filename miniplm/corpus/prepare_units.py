"""Step 1 of `miniplm prepare`, per source unit (a file, a batch of text files, or a dataset), in
parallel processes: read, check, give each document an id, a dedup key and a split, and write a
*part* file plus its rejects and counts, then the unit's completion marker."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from miniplm.corpus.dedup import write_keys
from miniplm.corpus.documents import BAD_INPUT_REASONS, assign_split, dedup_key, generated_id, normalise, problem_with
from miniplm.corpus.near_duplicates import Bands, band_columns
from miniplm.corpus.readers import Rejection, read_input
from miniplm.errors import StageError
from miniplm.files import atomic_path, atomic_write_json
from miniplm.lookups import expand_input
from miniplm.rundir import RunDir
from miniplm.schema.corpus import CorpusConfig
from miniplm.schema.job import JobConfig

NAME = "prepare"  # the stage: its work folder and completion markers
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
            groups += [
                (i, tuple(files[k : k + TEXT_FILES_PER_UNIT])) for k in range(0, len(files), TEXT_FILES_PER_UNIT)
            ]
        else:
            groups += [(i, (f,)) for f in files]
    return [Unit(n, i, paths) for n, (i, paths) in enumerate(groups)]


def metadata_columns(corpus: CorpusConfig) -> list[str]:
    names = [name for spec in corpus.inputs for name in spec.metadata_fields]
    return [n for n in dict.fromkeys(names) if n not in ("id", "text", "source")]


def shard_schema(corpus: CorpusConfig) -> pa.Schema:
    # Metadata columns are strings (JSON for non-string values): inputs of
    # different formats cannot be trusted to agree on a type.
    return pa.schema(
        [("id", pa.string()), ("text", pa.string()), ("source", pa.string())]
        + [(name, pa.string()) for name in metadata_columns(corpus)]
    )


def band_names_of(corpus: CorpusConfig) -> list[str]:
    """The MinHash band columns of a part file; none without near-duplicate removal."""
    return band_columns(corpus.near_duplicates) if corpus.near_duplicates is not None else []


def _part_schema(corpus: CorpusConfig) -> pa.Schema:
    extra = [("split", pa.string()), ("text_hash", pa.binary(16)), ("_file", pa.string()), ("_line", pa.int64())]
    bands = [(name, pa.uint64()) for name in band_names_of(corpus)]
    return pa.schema(list(shard_schema(corpus)) + extra + bands)


def keys_path(work: Path, unit: Unit, kind: str) -> Path:
    """A unit's dedup keys of one kind (corpus/dedup.py), beside its part."""
    return work / f"{unit.key}.{kind}.parquet"


def _meta_value(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


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
    band_names = band_names_of(corpus)

    with (
        atomic_path(work / f"{unit.key}.parquet") as part_tmp,
        atomic_path(work / f"{unit.key}.rejects.jsonl") as rejects_tmp,
        open(rejects_tmp, "wb") as rejects_file,
    ):
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
    write_keys(
        work / f"{unit.key}.parquet", lambda kind: keys_path(work, unit, kind), band_names, corpus.dedup_partitions
    )

    stats = {
        "read": read,
        "accepted": part.total,
        "rejected": dict(sorted(rejected.items())),
        "chars": dict(chars),
        "filtered": filtered,
    }
    atomic_write_json(work / f"{unit.key}.stats.json", stats)
    rd.mark_done(NAME, unit.key, config_hash)
    return stats


def run_units(job: JobConfig, units: list[Unit], config_hash: str, show_progress: bool) -> None:
    """Step 1 for `units`: here, or in up to corpus.num_workers processes."""
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
        with ProcessPoolExecutor(
            processes, mp_context=ctx, initializer=_init_worker, initargs=(counter, os.getpid())
        ) as pool:
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

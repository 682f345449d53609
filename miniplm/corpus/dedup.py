"""Exact and near-duplicate decisions, partitioned by hash: no process holds the corpus's keys.

Prepare keeps the first document of each text (exact duplicates), then the first of each id among
those (repeated ids), then the first of each group of near-copies among what is left, in input
order. Each of these is a question about documents that share a key (a text hash, an id, a MinHash
band), so the keys are split by their hash into `corpus.dedup_partitions` partitions, and a
partition's question is answered from its own keys, as datatrove's dedup stages do:

1. step 1 (per input unit) writes the unit's keys into three files, each sorted into one row group
   per partition: text hashes (`.exact`), ids (`.ids`) and the near-duplicate bands (`.bands`),
   with the document's row in the unit;
2. phase 1, per partition: the documents whose text hash an earlier document has (dropped), and
   the ids held by more than one document (resolved at the end: repeated ids are rare);
3. phase 2, per partition, after phase 1: per band value, the documents still in (not exact
   duplicates: a bitmap of the corpus, one bit a document) that share it;
4. at the end, once: the repeated ids among the documents left, then the groups of near-copies:
   documents sharing a band are joined, and each connected group keeps its first document.

Any worker (a process of a task, or another array task) takes a partition it can lock; a killed
one leaves its lock free and its partition to the next. The decisions depend on the keys and the
input order alone: the same kept set for any number of partitions, processes or tasks.
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from miniplm.files import atomic_path

KINDS = ("exact", "ids", "bands")
PHASES = (("exact", "ids"), ("near",))
KEYS_BATCH = 65_536  # rows of a part read at once when its keys are written


# ---------------------------------------------------------------------------------------------- step 1
def _text_partition(text_hash: pa.Array, partitions: int) -> np.ndarray:
    """A partition per 16-byte text hash: its first eight bytes, little-endian, modulo the count."""
    raw = np.frombuffer(text_hash.buffers()[1], dtype=np.uint64)[text_hash.offset * 2 :][: 2 * len(text_hash)]
    return (raw[0::2] % np.uint64(partitions)).astype(np.uint16)


def _id_partition(ids: list[str], partitions: int) -> np.ndarray:
    return np.array([xxhash.xxh64_intdigest(i.encode()) % partitions for i in ids], dtype=np.uint16)


def _write_sorted(path: Path, table: pa.Table, writer: dict[str, pq.ParquetWriter], by: tuple[str, ...]) -> None:
    """Append a table's rows, one row group per value of `by` (the partition, and the band), so that
    a reader finds its rows by the row groups' statistics."""
    if not table.num_rows:
        return
    table = table.sort_by([*((c, "ascending") for c in by), ("row", "ascending")])
    if path.name not in writer:
        writer[path.name] = pq.ParquetWriter(path, table.schema, compression="lz4")
    change = np.zeros(table.num_rows - 1, dtype=bool)
    for column in by:
        values = table[column].to_numpy()
        change |= values[1:] != values[:-1]
    bounds = np.flatnonzero(np.r_[True, change, True])
    for start, end in zip(bounds[:-1], bounds[1:]):
        writer[path.name].write_table(table.slice(start, end - start))


def write_keys(part: Path, keys: Callable[[str], Path], band_columns: list[str], partitions: int) -> None:
    """The keys of a unit's part file, partitioned: `keys(kind)` names each kind's file."""
    writers: dict[str, pq.ParquetWriter] = {}
    paths = {kind: keys(kind) for kind in KINDS}
    try:
        with (
            atomic_path(paths["exact"]) as exact,
            atomic_path(paths["ids"]) as ids,
            atomic_path(paths["bands"]) as bands,
        ):
            file = pq.ParquetFile(part)
            row = 0
            for batch in file.iter_batches(KEYS_BATCH, columns=["text_hash", "id", *band_columns]):
                n = batch.num_rows
                rows = pa.array(np.arange(row, row + n, dtype=np.uint32))
                text_hash = batch.column("text_hash")
                _write_sorted(
                    exact,
                    pa.table(
                        {
                            "partition": _text_partition(text_hash, partitions),
                            "text_hash": text_hash,
                            "row": rows,
                        }
                    ),
                    writers,
                    ("partition",),
                )
                unit_ids = batch.column("id")
                _write_sorted(
                    ids,
                    pa.table(
                        {"partition": _id_partition(unit_ids.to_pylist(), partitions), "id": unit_ids, "row": rows}
                    ),
                    writers,
                    ("partition",),
                )
                for b, name in enumerate(band_columns):
                    value = batch.column(name).to_numpy()
                    table = pa.table(
                        {
                            "partition": (value % np.uint64(partitions)).astype(np.uint16),
                            "band": np.full(n, b, dtype=np.uint8),
                            "value": value,
                            "row": rows,
                        }
                    )
                    _write_sorted(bands, table, writers, ("partition", "band"))
                row += n
            written = set(writers)
            for w in writers.values():
                w.close()
            writers.clear()
            for path in (exact, ids, bands):  # no rows: an empty file, so that every unit has its three
                if path.name not in written:
                    pq.write_table(pa.table({"partition": pa.array([], pa.uint16())}), path)
    finally:
        for w in writers.values():
            w.close()


# ---------------------------------------------------------------------------------------------- the phases
@dataclass(frozen=True)
class Plan:
    """Where the keys are and where each partition's answers go."""

    work: Path  # the stage's scratch folder: keys beside the parts, answers under dedup/
    units: tuple[str, ...]  # the units' keys, in input order
    rows: tuple[int, ...]  # documents per unit
    partitions: int
    bands: int  # near-duplicate bands per document; 0: near-duplicate removal is off

    @property
    def near(self) -> bool:
        return self.bands > 0

    @property
    def folder(self) -> Path:
        return self.work / "dedup"

    @property
    def documents(self) -> int:
        return sum(self.rows)

    def keys(self, unit: str, kind: str) -> Path:
        return self.work / f"{unit}.{kind}.parquet"

    def answer(self, kind: str, partition: int, suffix: str = ".parquet") -> Path:
        return self.folder / f"{kind}-{partition:05d}-of-{self.partitions:05d}{suffix}"

    def tasks(self, phase: int) -> list[tuple[str, int]]:
        kinds = [k for k in PHASES[phase] if k != "near" or self.near]
        return [(kind, p) for kind in kinds for p in range(self.partitions)]


def _holds(file: pq.ParquetFile, group: int, column: int, value: int) -> bool:
    stats = file.metadata.row_group(group).column(column).statistics
    return stats is not None and stats.has_min_max and stats.min == value


def _read_partition(plan: Plan, kind: str, partition: int, columns: list[str], band: int | None = None):
    """A partition's keys of every unit (of one band), with each document's row in the whole corpus."""
    frames = []
    offset = 0
    for unit, n in zip(plan.units, plan.rows):
        file = pq.ParquetFile(plan.keys(unit, kind))
        groups = [
            g
            for g in range(file.num_row_groups)
            if _holds(file, g, 0, partition) and (band is None or _holds(file, g, 1, band))
        ]
        if groups:
            table = file.read_row_groups(groups, columns=[*columns, "row"])
            frames.append(pl.from_arrow(table).with_columns(pl.col("row").cast(pl.Int64) + offset))
        offset += n
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames)


def _exact(plan: Plan, partition: int) -> None:
    keys = _read_partition(plan, "exact", partition, ["text_hash"])
    dropped = np.zeros(0, np.int64)
    if keys.height:
        keys = keys.sort("row")
        dropped = keys.filter(~pl.col("text_hash").is_first_distinct())["row"].to_numpy().astype(np.int64)
    with atomic_path(plan.answer("exact", partition, ".npy")) as tmp, open(tmp, "wb") as f:
        np.save(f, np.sort(dropped))


def _ids(plan: Plan, partition: int) -> None:
    keys = _read_partition(plan, "ids", partition, ["id"])
    shared = pl.DataFrame({"id": pl.Series(values=[], dtype=pl.String), "row": pl.Series(values=[], dtype=pl.Int64)})
    if keys.height:
        shared = keys.filter(pl.col("id").is_duplicated()).sort("id", "row")
    with atomic_path(plan.answer("ids", partition)) as tmp:
        shared.write_parquet(tmp)


def exact_bitmap(plan: Plan) -> np.ndarray:
    """One bit per document: whether it is an exact duplicate (phase 1's answers)."""
    bits = np.zeros((plan.documents + 7) // 8, dtype=np.uint8)
    for p in range(plan.partitions):
        rows = np.load(plan.answer("exact", p, ".npy"))
        np.bitwise_or.at(bits, rows >> 3, (1 << (rows & 7)).astype(np.uint8))
    return bits


def is_set(bits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return ((bits[rows >> 3] >> (rows & 7).astype(np.uint8)) & 1).astype(bool)


def _near(plan: Plan, partition: int) -> None:
    """Per band value of the partition, the documents still in that share it: (group, row). One band
    at a time: the partition's keys of one band are in memory, and the exact-duplicate bitmap."""
    exact = exact_bitmap(plan)
    found, groups = [], 0
    for b in range(plan.bands):
        keys = _read_partition(plan, "bands", partition, ["value"], band=b)
        if not keys.height:
            continue
        keys = keys.filter(~pl.Series(values=is_set(exact, keys["row"].to_numpy()))).sort("value", "row")
        value = keys["value"].to_numpy()
        group = np.cumsum(np.r_[True, value[1:] != value[:-1]]) - 1
        shared = np.bincount(group)[group] > 1
        found.append(pl.DataFrame({"group": group[shared] + groups, "row": keys["row"].filter(shared)}))
        groups += int(group[-1]) + 1 if len(group) else 0
    answer = pl.concat(found) if found else pl.DataFrame(schema={"group": pl.Int64, "row": pl.Int64})
    with atomic_path(plan.answer("near", partition)) as tmp:
        answer.write_parquet(tmp)


ANSWER = {"exact": _exact, "ids": _ids, "near": _near}


def _done(plan: Plan, kind: str, partition: int) -> bool:
    return plan.answer(kind, partition, ".npy" if kind == "exact" else ".parquet").exists()


def _claim(plan: Plan, tasks: list[tuple[str, int]], wait: bool) -> None:
    """Answer every task not answered yet that this process can lock (waiting for each lock, with
    `wait`, so that the phase is complete when it returns)."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    for kind, p in tasks:
        if _done(plan, kind, p):
            continue
        with open(plan.answer(kind, p, ".lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                continue  # another worker is on it
            if not _done(plan, kind, p):
                ANSWER[kind](plan, p)


def _worker(plan: Plan, phase: int) -> None:
    _claim(plan, plan.tasks(phase), wait=False)


def run(plan: Plan, processes: int = 1) -> None:
    """Both phases, over `processes` local processes; complete when it returns (tasks that other
    workers hold are waited for, and taken over if their worker died)."""
    for phase in range(len(PHASES)):
        tasks = plan.tasks(phase)
        if processes > 1 and len(tasks) > 1:
            # spawn, not fork: polars and pyarrow keep thread pools that fork would copy mid-use
            with ProcessPoolExecutor(min(processes, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
                for f in [pool.submit(_worker, plan, phase) for _ in range(min(processes, len(tasks)))]:
                    f.result()
        _claim(plan, tasks, wait=True)


# ---------------------------------------------------------------------------------------------- the end
KEEP, DUPLICATE, REPEATED_ID, NEAR_DUPLICATE = range(4)


@dataclass
class Decisions:
    """What is dropped, row by row, in memory per dropped document (and one bit per document)."""

    exact: np.ndarray  # bitmap
    repeated: np.ndarray  # sorted rows
    near: np.ndarray  # sorted rows of near-copies
    keeper: np.ndarray  # for each, the row of the document kept in its place

    def status(self, offset: int, n: int) -> np.ndarray:
        rows = np.arange(offset, offset + n, dtype=np.int64)
        out = np.zeros(n, dtype=np.int8)
        out[is_set(self.exact, rows)] = DUPLICATE
        out[np.isin(rows, self.repeated)] = REPEATED_ID
        out[np.isin(rows, self.near)] = NEAR_DUPLICATE
        return out

    def copy_of(self, row: int) -> int:
        return int(self.keeper[np.searchsorted(self.near, row)])

    @property
    def keepers(self) -> np.ndarray:
        return np.unique(self.keeper)


def decide(plan: Plan) -> Decisions:
    """The end of the dedup, from the partitions' answers: repeated ids, then near-copy groups."""
    exact = exact_bitmap(plan)
    shared_ids = pl.concat([pl.read_parquet(plan.answer("ids", p)) for p in range(plan.partitions)])
    shared_ids = shared_ids.filter(~pl.Series(values=is_set(exact, shared_ids["row"].to_numpy()))).sort("id", "row")
    repeated = np.sort(shared_ids.filter(~pl.col("id").is_first_distinct())["row"].to_numpy().astype(np.int64))
    near = keeper = np.zeros(0, np.int64)
    if plan.near:
        groups = []
        base = 0
        for p in range(plan.partitions):
            g = pl.read_parquet(plan.answer("near", p))
            groups.append(g.with_columns(pl.col("group") + base))
            base += int(g["group"].max() or 0) + 1
        shared = pl.concat(groups).filter(~pl.col("row").is_in(pl.Series(values=repeated).implode()))
        near, keeper = near_groups(shared)
    return Decisions(exact, repeated, near, keeper)


def near_groups(shared: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(rows of near-copies, the first row of each one's connected group): documents sharing a
    band value are joined, one after the other, and groups joined through any document merge."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    shared = shared.sort("group", "row")
    same = (shared["group"].to_numpy()[1:] == shared["group"].to_numpy()[:-1]) if shared.height else np.zeros(0, bool)
    rows = shared["row"].to_numpy()
    src, dst = rows[:-1][same], rows[1:][same]
    if not len(src):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    nodes = np.unique(np.concatenate([src, dst]))
    graph = coo_matrix(
        (np.ones(len(src), dtype=np.int8), (np.searchsorted(nodes, src), np.searchsorted(nodes, dst))),
        shape=(len(nodes), len(nodes)),
    )
    _, label = connected_components(graph, directed=False)
    _, first = np.unique(label, return_index=True)  # nodes are sorted: a label's first node is its first row
    keeper = nodes[first[label]]
    copies = keeper != nodes
    return nodes[copies].astype(np.int64), keeper[copies].astype(np.int64)


def default_partitions(input_bytes: int) -> int:
    """One partition per 4 GiB of input text (about a million web documents), at least one."""
    return max(1, -(-input_bytes // (4 << 30)))

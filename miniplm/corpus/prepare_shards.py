"""Step 2 of `miniplm prepare`, once every part exists: drop exact duplicates (first occurrence in
input order wins), repeated ids and near-copies, as the partitioned dedup decided from the keys
alone (corpus/dedup.py), then stream the parts into `docs/{split}/shard-NNNNN.parquet` and write
`docs/stats.json` and `docs/rejects.jsonl`."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from miniplm.corpus import dedup
from miniplm.corpus.dedup import DUPLICATE, KEEP, NEAR_DUPLICATE, REPEATED_ID
from miniplm.corpus.parquet import READ_BUFFER_BYTES, ShardWriter, iter_batches
from miniplm.corpus.prepare_units import NAME, PrepareError, Unit, band_names_of, shard_schema
from miniplm.files import atomic_path, atomic_write_json
from miniplm.rundir import SPLITS, RunDir
from miniplm.schema.job import JobConfig

DROPS = {DUPLICATE: "duplicates", REPEATED_ID: "duplicate_id", NEAR_DUPLICATE: "near_duplicate"}


def dedup_plan(job: JobConfig, rd: RunDir, units: list[Unit]) -> dedup.Plan:
    """Where the units' dedup keys are, and how many documents each holds (from its counts)."""
    work = rd.work(NAME)
    rows = tuple(json.loads((work / f"{u.key}.stats.json").read_text())["accepted"] for u in units)
    bands = len(band_names_of(job.corpus))
    return dedup.Plan(work, tuple(u.key for u in units), rows, job.corpus.dedup_partitions, bands)


def finalize(job: JobConfig, rd: RunDir, units: list[Unit]) -> dict:
    """Step 2 over every unit's part: the document shards, rejects.jsonl and stats.json; the stats."""
    work = rd.work(NAME)
    work.mkdir(parents=True, exist_ok=True)
    parts = [work / f"{u.key}.parquet" for u in units]
    unit_stats = [json.loads((work / f"{u.key}.stats.json").read_text()) for u in units]
    for split in SPLITS:  # a killed earlier finalize may have left some shards
        for stale in (rd.docs / split).glob("*shard-*"):
            stale.unlink()

    plan = dedup_plan(job, rd, units)
    dedup.run(plan, job.corpus.num_workers or 1)  # done already, unless a worker died in it
    decisions = dedup.decide(plan)
    schema = shard_schema(job.corpus)
    writers = {s: ShardWriter(schema, lambda i, s=s: rd.doc_shard(s, i), job.corpus.docs_per_shard) for s in SPLITS}
    kept: Counter[str] = Counter()
    kept_chars: Counter[str] = Counter()
    by_source: dict[str, Counter[str]] = {}
    offset = 0
    with _Drops(work / "global.rejects.jsonl", _merged_filter_counts(unit_stats), decisions) as drops:
        for part in parts:
            for batch in iter_batches(pq.ParquetFile(part, buffer_size=READ_BUFFER_BYTES), 4096):
                table = pa.Table.from_batches([batch])
                st = decisions.status(offset, table.num_rows)
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
        "inputs": [
            {
                "path": spec.path,
                "read": sum(st["read"] for u, st in zip(units, unit_stats) if u.input_index == i),
                "accepted": sum(st["accepted"] for u, st in zip(units, unit_stats) if u.input_index == i),
            }
            for i, spec in enumerate(job.corpus.inputs)
        ],
        # what each filter dropped (duplicates included), by the split the document's id falls in
        "dropped_by_split": {
            split: {src: dict(sorted(c.items())) for src, c in sorted(sources.items())}
            for split, sources in sorted(drops.by_split.items())
        },
    }
    atomic_write_json(rd.doc_stats, stats)
    return stats


class _Drops:
    """What the global step drops, batch by batch: counts per split and source, and a rejects line
    (written as it goes) for each repeated id and near-copy."""

    def __init__(self, path: Path, by_split: dict[str, dict[str, Counter[str]]], decisions: dedup.Decisions):
        self.path = path
        self.by_split = by_split  # split -> source -> reason, step 1's filters included
        self.decisions = decisions
        self.keepers = decisions.keepers
        self.kept_ids: dict[int, str] = {}  # of the documents near-copies were dropped for, as they pass
        self.duplicates = self.duplicate_chars = self.rejected_chars = 0
        self.rejected: Counter[str] = Counter()
        self.first_repeated_id: dict | None = None

    def __enter__(self) -> "_Drops":
        self.file = open(self.path, "wb")
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def add(self, table: pa.Table, status: np.ndarray, offset: int) -> None:
        rows = np.arange(offset, offset + table.num_rows)
        for at in np.flatnonzero(np.isin(rows, self.keepers)):  # a group's first document comes before its copies
            self.kept_ids[offset + int(at)] = table["id"][int(at)].as_py()
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
                detail = (
                    f"a near-copy of document {self.kept_ids[self.decisions.copy_of(int(at))]!r}"
                    if code == NEAR_DUPLICATE
                    else f"id {row['id']!r} already used"
                )
                record = dict(
                    file=row["_file"],
                    line=row["_line"],
                    reason=label,
                    detail=detail,
                    count=1,
                    id=row["id"],
                    source=row["source"],
                    split=row["split"],
                    chars=len(row["text"]),
                )
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

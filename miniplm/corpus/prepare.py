"""`miniplm prepare`: raw sources -> deduplicated document shards per split.

Two steps, so that the work scales and a killed run resumes:

1. Per source unit (a file, a batch of text files, or a dataset), in
   parallel processes: read, check, give each document an id, a dedup key
   and a split, and write a *part* file plus its rejects and counts. A unit
   whose completion marker exists is not read again.
2. Once every part exists: the dedup, partitioned by key hash so that any
   worker still running (a process, or another array task) answers a share
   in bounded memory (corpus/dedup.py); then, once, drop exact duplicates
   (first occurrence in input order wins), repeated ids and near-copies, and
   stream the parts into `docs/{split}/shard-NNNNN.parquet` and write
   `docs/stats.json` and `docs/rejects.jsonl`.

Input order, not worker timing, decides everything, so any number of worker
processes (or SLURM array tasks) gives byte-identical shards.

The steps are prepare_units.py and prepare_shards.py; this module is the stage.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from miniplm.corpus import dedup
from miniplm.corpus.prepare_shards import dedup_plan, finalize
from miniplm.corpus.prepare_units import NAME, PrepareError, Unit, plan_units, run_units
from miniplm.inputs import Files, Input
from miniplm.lookups import expand_input
from miniplm.paths import walk_files
from miniplm.rundir import SPLITS, RunDir
from miniplm.schema.corpus import CorpusConfig
from miniplm.schema.job import JobConfig
from miniplm.stage import Part, ShardedStage, StageRun

__all__ = ["NAME", "STAGE", "Prepare", "PrepareError", "read_stats", "summary_lines"]


def read_stats(run_dir: str | os.PathLike) -> dict:
    return json.loads(RunDir(run_dir).doc_stats.read_text())


@dataclass
class PrepareContext:
    """The input units, planned when first needed (a finished stage never needs them)."""

    corpus: CorpusConfig

    @functools.cached_property
    def units(self) -> list[Unit]:
        return plan_units(self.corpus)


class Prepare(ShardedStage):
    """Its shards are the input units; the worker that completes the set writes the document shards."""

    name = NAME
    summary = "read raw sources into deduplicated document shards per split"
    description = (
        "Read the job's corpus.inputs, drop bad, empty and duplicate documents, near-copies and noise "
        "(corpus.quality: Gopher's rules; corpus.near_duplicates: MinHash), each counted by reason, and "
        "write RUN_DIR/docs/{main,reference,heldout}/shard-*.parquet with stats.json and rejects.jsonl."
    )
    sections = ("seed", "corpus")
    unit = "input units"

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str]:
        return [u.key for u in plan_units(job.corpus)]

    def slurm_arguments(self) -> str:
        return 'corpus.num_workers="${SLURM_CPUS_PER_TASK:-1}"'  # one process per CPU of the task

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        # Every source by content: an input edited between two workers, or across a resume,
        # must not end up half old, half new in the shards.
        reads: list[Input] = []
        for i, spec in enumerate(job.corpus.inputs):
            if spec.format == "hf_disk":
                reads.append(Files(f"corpus.inputs.{i}", tuple(walk_files(spec.path))))
            elif spec.format != "hf_hub":  # a hub dataset is known by its name alone
                reads.append(Files(f"corpus.inputs.{i}", tuple(expand_input(spec))))
        return reads

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.docs]

    def shards(self, run: StageRun) -> list[str]:
        return [u.key for u in self._units(run)]

    def setup(self, run: StageRun) -> PrepareContext:
        return PrepareContext(run.job.corpus)

    def _units(self, run: StageRun) -> list[Unit]:
        return run.context.units

    def run_shards(self, run: StageRun, todo: list[int]) -> None:
        units = self._units(run)
        run_units(run.job, [units[i] for i in todo], run.config_hash, run.show_progress)
        if all(run.is_done(u.key) for u in units):  # every part is written: answer dedup partitions
            dedup.run(dedup_plan(run.job, run.rd, units), run.job.corpus.num_workers or os.cpu_count() or 1)

    def finish(self, run: StageRun) -> dict:
        stats = finalize(run.job, run.rd, self._units(run))
        return {k: stats[k] for k in ("documents_read", "kept", "duplicates", "rejected_total", "shards")}

    def result(self, run: StageRun) -> dict:
        return read_stats(run.rd.root)

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        return [f"prepare: documents in {job.run_dir}/docs", *summary_lines(result)]

    def warnings(self, job: JobConfig, result: dict) -> list[str]:
        found = [
            f"prepare: corpus.inputs.{i} ({given['path']}) gave no documents: "
            + (f"all {given['read']:,} records read were rejected" if given["read"] else "no records in it")
            for i, given in enumerate(result.get("inputs", []))
            if not given["accepted"]
        ]
        per_partition = result["documents_read"] / job.corpus.dedup_partitions
        if per_partition > DOCUMENTS_PER_PARTITION:
            found.append(
                f"prepare: {job.corpus.dedup_partitions} dedup partitions of about {per_partition:,.0f} documents "
                f"each: a worker held about {per_partition * KEY_BYTES / 2**30:.1f} GB of keys; for a corpus this "
                f"size set corpus.dedup_partitions to {math.ceil(result['documents_read'] / DOCUMENTS_PER_PARTITION)}"
            )
        if not result["kept_total"]:
            found.append(
                f"prepare: no document was kept of {result['documents_read']:,} read (rejected "
                f"{result['rejected_total']:,}, duplicates {result['duplicates']:,}); see "
                f"{job.run_dir}/docs/stats.json and rejects.jsonl"
            )
        return found


STAGE = Prepare()
DOCUMENTS_PER_PARTITION = 4_000_000  # past this, a dedup worker holds over half a GB of keys
KEY_BYTES = 120  # what a worker holds per document of its partition, at the peak (benchmarks/README.md)


def summary_lines(stats: dict) -> list[str]:
    kept, chars = stats["kept"], stats["characters"]
    reason_width = max([14, *map(len, stats["rejected"])])  # the filters' reasons are long
    return [
        f"documents read   {stats['documents_read']:>12,}",
        *(f"  kept {s:<11} {kept[s]:>12,}  ({chars['kept'][s]:,} chars, {stats['shards'][s]} shards)" for s in SPLITS),
        f"  duplicates     {stats['duplicates']:>12,}",
        *(f"  rejected {r:<{reason_width}} {n:>8,}" for r, n in stats["rejected"].items()),
    ]

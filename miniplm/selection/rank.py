"""`miniplm rank`: each task sorts a run of score shards by the selection's ranking, for select's cut.

The selection keeps the top of one ranking over the whole corpus. No process holds the corpus:
rank tasks each sort a run of consecutive score shards (about select.units_per_run units: a task's
memory, whatever the corpus size) and write

    ranked/run-NNNNN.arrow    every unit of the run, those still in the running (a finite score and
                              select.min_tokens) first, by key (highest first) then id: the
                              key, id, source, length (the tokens it trains on), teacher log-prob
                              per token, `pre` (0, or the reason it is out before the noise floor),
                              `raw_pool` and each random control's draw; Arrow IPC in record batches
                              of ROWS_PER_BATCH, so that the cut reads any batch alone;
    ranked/run-NNNNN.npy      the teacher log-probs per token of those in the running, sorted: the
                              noise floor's median is found from these without reading them;
    ranked/run-NNNNN.json     the run's totals (units, tokens, score shards).

select's global step merges the runs into the exact cut (selection/cut.py); its tasks then decide
their own shards' units against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from miniplm.draws import uniform_by_id
from miniplm.files import atomic_path, atomic_write_json
from miniplm.inputs import Input
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.job import JobConfig
from miniplm.schema.select import RandomControl, SelectConfig
from miniplm.selection import scores_source
from miniplm.selection.strategies import control_seed, keys_per_unit, needs_ids, unit_key, unit_numbers
from miniplm.stage import Part, ShardedStage, StageRun

NAME = "rank"
SCORE_COLUMNS = ["id", "source", "n_tokens", "teacher_logprob", "reference_logprob"]
ROWS_PER_BATCH = 2048  # the cut's merge reads a run a record batch at a time


def draw_column(control: RandomControl) -> str:
    return f"draw_{control.pool}"


def read_score_shard(path: Path) -> pl.DataFrame:
    """A score shard's columns the selection decides from (with doc_tokens, where prefixes were scored)."""
    columns = SCORE_COLUMNS + (["doc_tokens"] if "doc_tokens" in pq.read_schema(path).names else [])
    return pl.read_parquet(path, columns=columns)


def ranked(scores: pl.DataFrame, cfg: SelectConfig, seed: int, controls: tuple[RandomControl, ...]) -> pl.DataFrame:
    """The units of `scores` in rank order, with what the cut needs of each."""
    u = unit_numbers(scores, cfg)
    running = np.flatnonzero(u.pre == 0)
    key = np.full(scores.height, np.nan)
    if keys_per_unit(cfg):
        ids = scores["id"].gather(running) if needs_ids(cfg) else None
        key[running] = unit_key(cfg, seed, ids, u.score[running], u.teacher[running], u.loss[running]) + 0.0
    frame = pl.DataFrame(
        {
            "key": key,
            "id": scores["id"],
            "source": scores["source"],
            "length": u.length,
            "teacher": u.teacher,
            "pre": u.pre,
            "raw_pool": (u.pre != 1) & (scores["n_tokens"].to_numpy() >= 1),
            **{draw_column(c): uniform_by_id(scores["id"], control_seed(seed, c)) for c in controls},
        }
    ).with_columns(key=pl.when(pl.col("pre") == 0).then(pl.col("key")))  # null, so it sorts last
    return frame.sort(
        [pl.col("pre") != 0, "key", "id"], descending=[False, True, False], nulls_last=True, maintain_order=True
    )


def runs(rd: RunDir, cfg: SelectConfig) -> list[list[int]]:
    """The score shards of each run: consecutive, about select.units_per_run units together (counted
    from the first shard's rows)."""
    n = len(sorted(rd.scores.glob("shard-*.parquet")))
    if not n:
        return []
    per_shard = max(pq.read_metadata(rd.score_shard(0)).num_rows, 1)
    step = max(cfg.units_per_run // per_shard, 1)
    return [list(range(start, min(start + step, n))) for start in range(0, n, step)]


def write_run(rd: RunDir, index: int, shards: list[int], cfg: SelectConfig, seed: int, controls) -> None:
    frames = [read_score_shard(rd.score_shard(i)) for i in shards]
    scores = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    if "doc_tokens" in scores.columns:  # a shard scored before doc_tokens existed counts what it scored
        scores = scores.with_columns(doc_tokens=pl.col("doc_tokens").fill_null(pl.col("n_tokens")))
    run = ranked(scores, cfg, seed, controls)
    running = run.filter(pl.col("pre") == 0)
    with atomic_path(rd.ranked_run(index, ".npy")) as tmp, open(tmp, "wb") as f:
        np.save(f, np.sort(running["teacher"].to_numpy()))
    table = run.to_arrow()
    with atomic_path(rd.ranked_run(index)) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=ROWS_PER_BATCH)
    totals = {
        "units": run.height,
        "running": running.height,
        "length": int(run["length"].sum() or 0),
        "score_shards": shards,
    }
    atomic_write_json(rd.ranked_run(index, ".json"), totals)


class Rank(ShardedStage):
    """Runs of score shards, each sorted by the selection's ranking."""

    name = NAME
    summary = "sort runs of score shards by the selection's ranking, for select's cut"
    description = (
        "Per run of consecutive score shards (select.units_per_run units), write RUN_DIR/ranked/: the units "
        "sorted by the strategy's key, the sorted teacher log-probs the noise floor is measured on, and "
        "totals. select merges the runs into its cut without holding the corpus."
    )
    sections = ("seed", "select")
    unit = "runs"

    def applies(self, job: JobConfig) -> bool:
        return job.teacher is not None and job.reference is not None

    def parts(self, job: JobConfig, only: str | None = None) -> list[Part]:
        return scores_source.parts(self.name, job)

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        return [scores_source.scores(job, part, why="rank sorts the finished scores")]

    def run_dir(self, job: JobConfig, part: Part) -> RunDir:
        return scores_source.run_dir(job, part)

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        if rd.stage_state(scores_source.scores(job, part, "").stage).get("state") != "done":
            return None
        return [shard_name(i, "") for i in range(len(runs(scores_source.run_dir(job, part, rd.root), job.select)))]

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.ranked]

    def setup(self, run: StageRun) -> list[list[int]]:
        return runs(run.rd, run.job.select)

    def shards(self, run: StageRun) -> list[str]:
        return [shard_name(i, "") for i in range(len(run.context))]

    def run_shard(self, run: StageRun, index: int) -> None:
        job = run.job
        cfg = scores_source.select_config(job, run.part)
        write_run(run.rd, index, run.context[index], cfg, job.seed, cfg.random_controls)

    def finish(self, run: StageRun) -> dict:
        import json

        totals = [json.loads(run.rd.ranked_run(i, ".json").read_text()) for i in range(len(run.context))]
        return {
            "runs": len(totals),
            "units": sum(t["units"] for t in totals),
            "running": sum(t["running"] for t in totals),
        }

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        return [
            f"{label}: {counts['units']:,} units in {counts['runs']:,} sorted runs, {counts['running']:,} of them "
            "with a usable score"
            if counts is not None
            else f"{label}: this worker's share is done; the last worker to finish completes it"
            for label, counts in scores_source.per_part(self.name, result)
        ]


STAGE = Rank()

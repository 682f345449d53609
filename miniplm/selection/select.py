"""`miniplm select`: keep the documents the strategy ranks highest, with their text.

Two steps that scale:
1. global, once: read every score shard (ids and scores, never text), decide
   what is kept (selection/strategies.py) and write
   RUN_DIR/selection/decisions.parquet;
2. per document shard, by any worker: keep that shard's chosen rows, in
   their original order, with a `score` column, as selected/shard-NNNNN.parquet.
When the last shard is written the report is built.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from tqdm import tqdm

from miniplm.config import ConfigError, JobConfig, dump_job, stage_config_hash
from miniplm.rundir import RunDir, StageError, Worker, atomic_path, file_lock
from miniplm.selection import report
from miniplm.selection.strategies import counts, decide, length_column, random_baseline

STAGE = "select"
SCORE_COLUMNS = ["id", "source", "n_tokens", "teacher_logprob", "reference_logprob"]


def decisions_path(rd: RunDir) -> Path:
    return rd.root / "selection" / "decisions.parquet"


def selected_shard(rd: RunDir, index: int, folder: str = "selected") -> Path:
    return rd.root / folder / f"shard-{index:05d}.parquet"


def read_scores(rd: RunDir) -> pl.DataFrame:
    """Every score row, with the index of the shard it came from."""
    files = sorted((rd.root / "scores").glob("shard-*.parquet"))
    if files and "docs" in pl.read_parquet_schema(files[0]):
        raise ConfigError("select keeps documents, and these scores are of instances: score with score.unit: document")
    columns = SCORE_COLUMNS + (["doc_tokens"] if files and "doc_tokens" in pl.read_parquet_schema(files[0]) else [])
    frames = [pl.scan_parquet(f).select(columns).with_columns(shard=pl.lit(int(f.stem.split("-")[1]), pl.Int32))
              for f in files]
    if not frames:  # an empty main split
        schema = {"id": pl.String, "source": pl.String, "n_tokens": pl.Int64, "teacher_logprob": pl.Float64,
                  "reference_logprob": pl.Float64, "shard": pl.Int32}
        return pl.DataFrame(schema=schema)
    return pl.concat(frames).collect()


def _decide_once(job: JobConfig, rd: RunDir, config_hash: str) -> None:
    with file_lock(rd.work(STAGE) / "decide.lock"):
        if rd.is_done(STAGE, "decisions", config_hash) or rd.stage_state(STAGE).get("state") == "done":
            return
        scores = read_scores(rd)
        decisions = decide(scores, job.select, job.seed)
        if job.select.random_baseline:
            decisions = decisions.with_columns(random_baseline(scores, decisions, job.seed))
        with atomic_path(decisions_path(rd)) as tmp:
            decisions.write_parquet(tmp)
        rd.mark_done(STAGE, "decisions", config_hash)


def _write_shard(rd: RunDir, index: int, doc_shard: Path, with_baseline: bool) -> None:
    decisions = pl.scan_parquet(decisions_path(rd)).filter(pl.col("shard") == index)
    docs = pl.read_parquet(doc_shard)
    outputs = [("kept", "selected")] + ([("random_kept", "selected-random")] if with_baseline else [])
    for column, folder in outputs:
        keep = decisions.filter(pl.col(column)).select("id", "score").collect()
        chosen = docs.join(keep, on="id", how="inner", maintain_order="left")
        if chosen.height != keep.height:
            raise StageError(f"{doc_shard}: {keep.height - chosen.height} selected ids are not in the document shard; "
                             "were the documents prepared again after scoring?")
        with atomic_path(selected_shard(rd, index, folder)) as tmp:
            chosen.write_parquet(tmp, compression="zstd")


def run(job: JobConfig, worker: Worker = Worker(), *, force: bool = False, show_progress: bool = True) -> dict | None:
    """Select this worker's share of the shards. Returns the counts once every shard is written
    (and the report built), or None while other workers still have shards to write."""
    rd = RunDir(job.run_dir)
    score_state = rd.stage_state("score")
    if score_state.get("state") != "done":
        raise StageError(f"{rd.root}: no finished scores; run `miniplm score` first")
    config_hash = stage_config_hash(job, STAGE, score_state["config_hash"])
    outputs = [rd.root / name for name in ("selected", "selected-random", "selection", "report")]
    if rd.open_stage(STAGE, config_hash, dump_job(job), outputs, force=force):
        return rd.stage_state(STAGE)["counts"]
    try:
        _decide_once(job, rd, config_hash)
        doc_shards = rd.doc_shards("main")
        todo = [i for i in worker.owned(len(doc_shards)) if not rd.is_done(STAGE, f"shard-{i:05d}", config_hash)]
        for i in tqdm(todo, desc="select", unit="shard", disable=not show_progress or not todo):
            if rd.stage_state(STAGE).get("state") == "done":
                break  # a late worker: the others finished the stage meanwhile
            _write_shard(rd, i, doc_shards[i], job.select.random_baseline)
            rd.mark_done(STAGE, f"shard-{i:05d}", config_hash)
        if rd.stage_state(STAGE).get("state") == "done":
            return rd.stage_state(STAGE)["counts"]
        if not all(rd.is_done(STAGE, f"shard-{i:05d}", config_hash) for i in range(len(doc_shards))):
            return None
        rd.finish_once(STAGE, lambda: _finish(job, rd))
    except Exception as e:  # anything but an interrupt: the manifest must not say running
        rd.fail_stage(STAGE, str(e))
        raise
    return rd.stage_state(STAGE)["counts"]


def _finish(job: JobConfig, rd: RunDir) -> dict:
    decisions = pl.read_parquet(decisions_path(rd))
    summary = counts(decisions)
    written = sum(pl.scan_parquet(p).select(pl.len()).collect().item()
                  for p in sorted((rd.root / "selected").glob("shard-*.parquet")))
    if written != summary["kept"]:
        raise StageError(f"selected shards hold {written} documents, the decisions keep {summary['kept']}")
    if "random_kept" in decisions.columns:
        baseline = decisions.filter(pl.col("random_kept"))
        summary["random_baseline"] = {"kept": baseline.height,
                                      "tokens": int(baseline[length_column(decisions)].sum() or 0)}
    report.build(job, rd, decisions)
    return summary


def rebuild_report(job: JobConfig) -> Path:
    """`miniplm report`: the report again from the decisions on disk."""
    rd = RunDir(job.run_dir)
    if not decisions_path(rd).exists():
        raise StageError(f"{rd.root}: no selection decisions; run `miniplm select` first")
    return report.build(job, rd, pl.read_parquet(decisions_path(rd)))


def read_summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "report" / "summary.json").read_text())


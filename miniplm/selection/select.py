"""`miniplm select`: keep the units (documents or packed instances) the strategy ranks highest,
with their text.

Two steps that scale:
1. global, once: read every score shard (ids and scores, never text), decide
   what is kept (selection/strategies.py) and write
   RUN_DIR/selection/decisions.parquet;
2. per document shard, by any worker: keep that shard's chosen rows, in
   their original order, with a `score` column, as selected/shard-NNNNN.parquet.
   Instances keep their tokens (`input_ids`, which a student of the scoring
   tokenizer trains on as they are), their provenance (`docs`) and their text
   rebuilt from the documents (for a student of another tokenizer). The random controls
   (select.random_baseline) are written the same way, each to its own folder: selected-random/
   (drawn from every scored unit) and selected-random-filtered/ (from what the filters left).
When the last shard is written the report is built.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from miniplm import outputs
from miniplm.errors import StageError
from miniplm.files import atomic_path
from miniplm.inputs import Input
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.select import RANDOM_CONTROLS, RandomControl
from miniplm.stage import Part, ShardedStage, StageRun, doc_shard_keys

NAME = "select"
SCORE_COLUMNS = ["id", "source", "n_tokens", "teacher_logprob", "reference_logprob"]
# decision column, output folder: the selection, then each random control
OUTPUTS = (("kept", "selected"), *((c.column, c.folder) for c in RANDOM_CONTROLS))


def read_scores(rd: RunDir) -> pl.DataFrame:
    """Every score row, with the index of the shard it came from."""
    files = sorted(rd.scores.glob("shard-*.parquet"))
    columns = SCORE_COLUMNS + (["doc_tokens"] if files and "doc_tokens" in pl.read_parquet_schema(files[0]) else [])
    frames = [
        pl.scan_parquet(f).select(columns).with_columns(shard=pl.lit(int(f.stem.split("-")[1]), pl.Int32))
        for f in files
    ]
    if not frames:  # an empty main split
        schema = {
            "id": pl.String,
            "source": pl.String,
            "n_tokens": pl.Int64,
            "teacher_logprob": pl.Float64,
            "reference_logprob": pl.Float64,
            "shard": pl.Int32,
        }
        return pl.DataFrame(schema=schema)
    return pl.concat(frames).collect()


INSTANCE_COLUMNS = ["id", "text", "source", "score", "n_tokens", "input_ids", "docs"]


def _instances(rd: RunDir, index: int, doc_shard: Path) -> pl.DataFrame:
    """A shard's scored instances with their text, rebuilt from the documents they hold."""
    from miniplm.scoring.instances import instance_text

    instances = pl.read_parquet(rd.score_shard(index), columns=["id", "source", "n_tokens", "input_ids", "docs"])
    texts = dict(pl.read_parquet(doc_shard, columns=["id", "text"]).iter_rows())
    return instances.with_columns(
        text=pl.Series([instance_text(p, texts) for p in instances["docs"].to_list()], dtype=pl.String)
    )


def _write_shard(rd: RunDir, index: int, doc_shard: Path, controls: tuple[RandomControl, ...], unit: str) -> None:
    decisions = pl.scan_parquet(rd.decisions).filter(pl.col("shard") == index)
    units = pl.read_parquet(doc_shard) if unit == "document" else _instances(rd, index, doc_shard)
    for column, folder in [OUTPUTS[0], *((c.column, c.folder) for c in controls)]:
        keep = decisions.filter(pl.col(column)).select("id", "score").collect()
        chosen = units.join(keep, on="id", how="inner", maintain_order="left")
        if unit == "instance":
            chosen = chosen.select(INSTANCE_COLUMNS)
        if chosen.height != keep.height:
            raise StageError(
                f"{doc_shard}: {keep.height - chosen.height} selected ids are not in the document shard; "
                "were the documents prepared again after scoring?"
            )
        with atomic_path(rd.selected_shard(index, folder)) as tmp:
            chosen.write_parquet(tmp, compression="zstd")


class Select(ShardedStage):
    """A global decision over all scores, then one selected shard per main-split document shard."""

    name = NAME
    summary = "keep the documents the strategy ranks highest, with their text, and write the report"
    description = (
        "Decide from all score shards at once what to keep (select.strategy and its budget, the noise "
        "floor, the source cap), then write RUN_DIR/selected/shard-*.parquet (the documents plus `score`) "
        "and RUN_DIR/report/."
    )
    sections = ("seed", "select")  # plus the score stage's own hash, which covers the rest

    def applies(self, job: JobConfig) -> bool:
        return job.teacher is not None and job.reference is not None

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        return doc_shard_keys(rd)

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        return [outputs.scores(why="select reads finished scores"), outputs.documents("main")]

    def outputs(self, run: StageRun) -> list[Path]:
        # not report/: the page is assembled from every stage's sections and rebuilt when select finishes
        rd = run.rd
        return [*(rd.selected(folder) for _, folder in OUTPUTS), rd.selection]

    def shards(self, run: StageRun) -> list[str]:
        return doc_shard_keys(run.rd) or []

    def global_step(self, run: StageRun) -> None:
        from miniplm.selection.strategies import decide, random_baseline

        scores = read_scores(run.rd)
        decisions = decide(scores, run.job.select, run.job.seed)
        for control in run.job.select.random_controls:
            decisions = decisions.with_columns(random_baseline(scores, decisions, run.job.seed, control.pool))
        with atomic_path(run.rd.decisions) as tmp:
            decisions.write_parquet(tmp)

    def run_shard(self, run: StageRun, index: int) -> None:
        _write_shard(
            run.rd, index, run.rd.doc_shards("main")[index], run.job.select.random_controls, run.job.score.unit
        )

    def finish(self, run: StageRun) -> dict:
        from miniplm.selection import report
        from miniplm.selection.drops import SHOWN_IN_TERMINAL, noise_summary
        from miniplm.selection.strategies import control_counts, counts

        rd = run.rd
        decisions = pl.read_parquet(rd.decisions)
        summary = counts(decisions) | noise_summary(run.job, rd, decisions, limit=SHOWN_IN_TERMINAL)
        controls = control_counts(decisions)
        summary |= controls
        for folder, kept in [("selected", summary["kept"]), *((c["folder"], c["kept"]) for c in controls.values())]:
            written = sum(
                pl.scan_parquet(p).select(pl.len()).collect().item()
                for p in sorted(rd.selected(folder).glob("shard-*.parquet"))
            )
            if written != kept:
                raise StageError(f"{folder} shards hold {written} documents, the decisions keep {kept}")
        summary["unit"] = run.job.score.unit
        report.build(run.job, rd, decisions)
        return summary

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        dropped = ", ".join(f"{r} {n:,}" for r, n in result["dropped"].items() if n)
        kept, total = result["tokens_kept"], result["tokens_scored"]
        scored_on = ""
        if "doc_tokens" in result and result["doc_tokens"] != total:  # prefixes were scored: budgets count all
            scored_on = f", scored on {kept:,} of {total:,}"
            kept, total = result["doc_tokens_kept"], result["doc_tokens"]
        units = f"{result.get('unit', 'document')}s"
        share = lambda part, whole: f" ({part / whole:.1%})" if whole else ""  # noqa: E731
        lines = [
            f"select: kept {result['kept']:,} of {result['scored']:,} {units}{share(result['kept'], result['scored'])}"
            f" and {kept:,} of {total:,} tokens{share(kept, total)}{scored_on}; dropped: {dropped or 'none'}"
        ]
        lines += _noise_lines(result)
        lines += _control_lines(job, result, units)
        return [*lines, f"report: {job.run_dir}/report/index.html"]

    def warnings(self, job: JobConfig, result: dict) -> list[str]:
        if result["kept"] or not result["scored"]:
            return []
        dropped = ", ".join(f"{r} {n:,}" for r, n in result["dropped"].items() if n)
        return [
            f"select: nothing was kept of {result['scored']:,} scored documents ({dropped}); check the "
            "select settings (min_teacher_logprob, min_tokens, the budget)"
        ]

    def report(self, job: JobConfig, rd: RunDir) -> None:
        """Its sections of the report again, from the decisions on disk."""
        from miniplm.selection import report

        if not rd.decisions.exists():
            raise StageError(f"{rd.root}: no selection decisions; run `miniplm select` first")
        report.build(job, rd, pl.read_parquet(rd.decisions))


STAGE = Select()


def _control_lines(job: JobConfig, result: dict, units: str) -> list[str]:
    """One line per random control: its pool, what it kept of the selection's token budget, where it is."""
    lines = []
    for control in RANDOM_CONTROLS:
        c = result.get(control.entry)
        if c is None:
            continue
        pool = "every scored unit" if control.pool == "raw" else "what the filters left"
        if "pool_units" in c:  # recorded since the filtered control exists
            pool += f", {c['pool_units']:,} {units}"
        lines.append(
            f"select: random control ({control.pool}: from {pool}) of the same token budget: "
            f"{c['kept']:,} {units}, {c['tokens']:,} tokens, in {job.run_dir}/{control.folder}"
        )
    return lines


def _noise_lines(result: dict) -> list[str]:
    """The noise floor it used, and what each filter dropped per source (the demo prints these)."""
    from miniplm.selection.drops import table_lines
    from miniplm.selection.noise_floor import NoiseFloor

    if "noise_floor" not in result:  # a selection made before these were recorded
        return []
    below = result["dropped"]["low_teacher_logprob"]
    lines = [f"select: {NoiseFloor(**result['noise_floor']).describe()}; {below:,} documents below it"]
    if result["drops"]:
        lines += [
            "select: documents of the main split dropped per source, by prepare's filters and the selection's "
            "(the budget's cut apart):",
            *table_lines(result["drops"]),
        ]
    return lines

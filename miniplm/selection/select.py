"""`miniplm select`: keep the units (documents or packed instances) the strategy ranks highest,
with their text.

Two steps that scale, after rank sorted runs of the score shards (selection/rank.py):
1. global, once: merge the runs into the cut (selection/cut.py: the noise floor, each
   source's cap, the last unit kept, the random controls' draws) and write
   RUN_DIR/selection/cut.json: a few numbers and ids, in memory bounded by a record
   batch per run, not by the corpus;
2. per document shard, by any worker: decide that shard's units from their score rows
   and the cut (RUN_DIR/selection/decisions/shard-NNNNN.parquet: every unit's numbers
   and fate) and keep the chosen rows, in their original order, with a `score` column,
   as selected/shard-NNNNN.parquet.
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
from miniplm.outputs import PROXY_SELECTED
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.select import RANDOM_CONTROLS, RandomControl, SelectConfig
from miniplm.selection import scores_source
from miniplm.stage import Part, ShardedStage, StageRun, doc_shard_keys

NAME = "select"
EMPTY_SCORES = {
    "id": pl.String,
    "source": pl.String,
    "n_tokens": pl.Int64,
    "teacher_logprob": pl.Float64,
    "reference_logprob": pl.Float64,
    "shard": pl.Int32,
}
# decision column, output folder: the selection, then each random control
OUTPUTS = (("kept", "selected"), *((c.column, c.folder) for c in RANDOM_CONTROLS))


def read_scores(rd: RunDir) -> pl.DataFrame:
    """Every score row, with the index of the shard it came from: the whole corpus in memory, for
    perplexity's middle band (a key of the whole pool) only."""
    from miniplm.selection.rank import read_score_shard

    files = sorted(rd.scores.glob("shard-*.parquet"))
    frames = [_with_shard(read_score_shard(f), int(f.stem.split("-")[1])) for f in files]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema=EMPTY_SCORES)


def _with_shard(scores: pl.DataFrame, index: int) -> pl.DataFrame:
    """The score rows with the index of their shard, after the score columns (as decisions hold them)."""
    return scores.with_columns(shard=pl.lit(index, pl.Int32))


def _decide_in_memory(scores: pl.DataFrame, cfg: SelectConfig, seed: int) -> pl.DataFrame:
    from miniplm.selection.strategies import decide, random_baseline

    decisions = decide(scores, cfg, seed)
    for control in cfg.random_controls:
        decisions = decisions.with_columns(random_baseline(scores, decisions, seed, control.pool))
    return decisions


def shard_decisions(run: StageRun, index: int) -> pl.DataFrame:
    """A shard's decisions: its units decided from their score rows and the cut."""
    from miniplm.selection.cut import Cut, apply
    from miniplm.selection.rank import read_score_shard

    cut = Cut.load(run.rd.cut)
    if cut.in_memory:  # the global step decided every unit
        return pl.read_parquet(run.rd.decisions_shard(index))
    scores = _with_shard(read_score_shard(run.rd.score_shard(index)), index)
    return apply(scores, cut, scores_source.select_config(run.job, run.part), run.job.seed)


INSTANCE_COLUMNS = ["id", "text", "source", "score", "n_tokens", "input_ids", "docs"]


def _instances(rd: RunDir, index: int, doc_shard: Path) -> pl.DataFrame:
    """A shard's scored instances with their text, rebuilt from the documents they hold."""
    from miniplm.scoring.instances import instance_text

    instances = pl.read_parquet(rd.score_shard(index), columns=["id", "source", "n_tokens", "input_ids", "docs"])
    texts = dict(pl.read_parquet(doc_shard, columns=["id", "text"]).iter_rows())
    return instances.with_columns(
        text=pl.Series([instance_text(p, texts) for p in instances["docs"].to_list()], dtype=pl.String)
    )


def _write_shard(
    rd: RunDir, index: int, doc_shard: Path, decisions: pl.DataFrame, controls: tuple[RandomControl, ...], unit: str
) -> None:
    units = pl.read_parquet(doc_shard) if unit == "document" else _instances(rd, index, doc_shard)
    for column, folder in [OUTPUTS[0], *((c.column, c.folder) for c in controls)]:
        keep = decisions.filter(pl.col(column)).select("id", "score")
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
    """A cut over rank's sorted runs, then one decided and one selected shard per main-split document shard."""

    name = NAME
    summary = "keep the documents the strategy ranks highest, with their text, and write the report"
    description = (
        "Merge rank's sorted runs into the cut: what select.strategy keeps of its budget after the noise "
        "floor and the source cap; then each task decides its own shards' units against it and writes "
        "RUN_DIR/selected/shard-*.parquet (the documents plus `score`); the last one writes RUN_DIR/report/."
    )
    sections = ("seed", "select")  # plus the score stage's own hash, which covers the rest

    def applies(self, job: JobConfig) -> bool:
        return job.teacher is not None and job.reference is not None

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        return doc_shard_keys(rd)

    def parts(self, job: JobConfig, only: str | None = None) -> list[Part]:
        return scores_source.parts(self.name, job)

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        return [
            scores_source.ranked(part, why="select merges the sorted runs into its cut"),
            scores_source.scores(job, part, why="each select task decides its shard's units from their scores"),
            outputs.documents("main"),
        ]

    def run_dir(self, job: JobConfig, part: Part) -> RunDir:
        return scores_source.run_dir(job, part)

    def outputs(self, run: StageRun) -> list[Path]:
        # not report/: the page is assembled from every stage's sections and rebuilt when select finishes
        rd = run.rd
        if scores_source.of_proxy(run.part):
            return [rd.selected(), rd.selection]
        return [*(rd.selected(folder) for _, folder in OUTPUTS), rd.selection]

    def shards(self, run: StageRun) -> list[str]:
        return doc_shard_keys(run.rd) or []

    def global_step(self, run: StageRun) -> None:
        from miniplm.selection import cut

        rd, cfg, seed = run.rd, scores_source.select_config(run.job, run.part), run.job.seed
        rd.decisions.mkdir(parents=True, exist_ok=True)
        if not cut.exact_in_memory(cfg):
            cut.compute(rd, cfg, seed).save(rd.cut)
            return
        decisions = _decide_in_memory(read_scores(rd), cfg, seed)
        for (index,), rows in decisions.group_by("shard"):
            with atomic_path(rd.decisions_shard(index)) as tmp:
                rows.write_parquet(tmp)
        cut.in_memory(decisions, cfg).save(rd.cut)

    def run_shard(self, run: StageRun, index: int) -> None:
        rd = run.rd
        decisions = shard_decisions(run, index)
        with atomic_path(rd.decisions_shard(index)) as tmp:
            decisions.write_parquet(tmp)
        controls = scores_source.select_config(run.job, run.part).random_controls
        _write_shard(rd, index, rd.doc_shards("main")[index], decisions, controls, run.job.score.unit)

    def finish(self, run: StageRun) -> dict:
        from miniplm.selection import report
        from miniplm.selection.cut import Cut
        from miniplm.selection.drops import SHOWN_IN_TERMINAL, noise_summary
        from miniplm.selection.tally import control_counts, counts, tally

        rd = run.rd
        floor = Cut.load(rd.cut).floor
        t = tally(report.scan_decisions(rd))
        summary = counts(t) | noise_summary(rd, t, floor, limit=SHOWN_IN_TERMINAL)
        controls = control_counts(t)
        summary |= controls
        for folder, kept in [("selected", summary["kept"]), *((c["folder"], c["kept"]) for c in controls.values())]:
            written = sum(
                pl.scan_parquet(p).select(pl.len()).collect().item()
                for p in sorted(rd.selected(folder).glob("shard-*.parquet"))
            )
            if written != kept:
                raise StageError(f"{folder} shards hold {written} documents, the decisions keep {kept}")
        summary["unit"] = run.job.score.unit
        if not scores_source.of_proxy(run.part):  # the report shows the selection the job trains on
            report.build(run.job, rd, floor)
        return summary

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        lines = []
        for label, counts in scores_source.per_part(self.name, result):
            if counts is None:
                lines.append(f"{label}: this worker's share is done; the last worker to finish completes it")
                continue
            said = self._describe(job, counts) if label == self.name else self._describe_proxy(job, counts)
            lines += [line.replace(f"{self.name}:", f"{label}:", 1) for line in said]
        return lines

    def _describe(self, job: JobConfig, result: dict) -> list[str]:
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

    def _describe_proxy(self, job: JobConfig, result: dict) -> list[str]:
        """The selection from the proxy's scores, beside the LM's: what it kept, and where."""
        return [*self._describe(job, result)[:-1], f"select: the proxy's selection in {job.run_dir}/{PROXY_SELECTED}"]

    def warnings(self, job: JobConfig, result: dict) -> list[str]:
        return [w for _, counts in scores_source.per_part(self.name, result) if counts for w in self._warnings(counts)]

    def _warnings(self, result: dict) -> list[str]:
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
        from miniplm.selection.cut import Cut

        rd = scores_source.run_dir(job, Part(self.name), rd.root)
        if not rd.cut.exists():
            raise StageError(f"{rd.root}: no selection decisions; run `miniplm select` first")
        report.build(job, rd, Cut.load(rd.cut).floor)


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

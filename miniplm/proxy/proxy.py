"""`miniplm proxy`: the teacher's judgement at a fraction of its cost.

The teacher and the reference score a seeded sample of the main split, stratified by source
(scoring/sample.py; with `proxy.use: instead` the score stage scores nothing else). Once, the
first task fits a cheap model (proxy/model.py) on most of the sample's scores and judges it on
the rest; then every task predicts its own document shards on the CPU and writes

    proxy/scores/shard-NNNNN.parquet   a score shard like the score stage's (same units, same
                                       columns), each unit's `score_source` saying whether its
                                       numbers are the LMs' (`lm`, the sample) or the model's (`proxy`)
    proxy/model/                       the fitted model
    proxy/holdout.parquet              the held-out units' LM and proxy scores
    proxy/fit.json                     what the fit saw and cost

which rank and select read as they read LM scores (selection/scores_source.py). When the last
shard is written, the agreement with the LM scores on the held-out units is measured (Spearman,
and the overlap of the job's selection from each: proxy/agreement.py) and the FLOPs recorded.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import polars.selectors as cs
import pyarrow.parquet as pq

from miniplm import outputs
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_path, atomic_write_json
from miniplm.inputs import Input, Upstream
from miniplm.proxy.files import (
    NAME,
    STATS_KEY,
    cpu_seconds,
    fit_record,
    folder,
    holdout,
    model_folder,
    scores_shard,
)
from miniplm.proxy.model import HashedRidge
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.job import JobConfig
from miniplm.schema.proxy import MIN_HELDOUT_UNITS, MIN_TRAIN_UNITS
from miniplm.scoring.instances import Boundaries
from miniplm.scoring.sample import held_out, in_sample, rates, source_counts
from miniplm.stage import Part, ShardedStage, StageRun, doc_shard_keys

LABELS = ["id", "source", "n_tokens", "teacher_logprob", "reference_logprob"]
ALL = "*"  # tokens_per_char: a source the sample did not see
INSTANCE_COLUMNS = ["input_ids", "docs"]


@dataclass
class ProxyContext:
    tokenizer: Any
    boundaries: Boundaries | None
    rates: dict[str, float]  # each source's sampling rate


def units(
    job: JobConfig, ctx: ProxyContext, index: int, path: Path, tokens_per_char: dict[str, float] | None = None
) -> pl.DataFrame:
    """A document shard's units as the score stage makes them: id, source, n_tokens (and doc_tokens
    for documents; input_ids and docs for instances), with each unit's text. `tokens_per_char`: count
    a document's tokens from its characters (proxy.token_counts: estimated)."""
    from miniplm.models.text_tokens import token_ids
    from miniplm.scoring.instances import instance_text
    from miniplm.scoring.score import tokenize_shard

    docs = pl.read_parquet(path, columns=["id", "source", "text"])
    if job.score.unit == "document":
        if tokens_per_char is None:
            lengths = np.array([len(t) for t in token_ids(ctx.tokenizer, docs["text"].to_list())], dtype=np.int64)
        else:
            lengths = estimated_tokens(docs, tokens_per_char)
        predicted = np.minimum(lengths, job.score.max_tokens) if job.score.max_tokens else lengths
        return docs.select(
            "id", "source", n_tokens=pl.Series(predicted), doc_tokens=pl.Series(lengths), text=pl.col("text")
        )
    shard = tokenize_shard(job, ctx.tokenizer, ctx.boundaries, index, path)
    texts = dict(zip(docs["id"].to_list(), docs["text"].to_list()))
    return pl.DataFrame(
        {
            "id": shard.rows["id"],
            "source": shard.rows["source"],
            "n_tokens": shard.predicted(),
            "input_ids": shard.rows["input_ids"],
            "docs": shard.rows["docs"],
            "text": [instance_text(pieces, texts) for pieces in shard.rows["docs"]],
        },
        schema_overrides={"input_ids": pl.List(pl.Int32)},
    )


def estimated_tokens(docs: pl.DataFrame, tokens_per_char: dict[str, float]) -> np.ndarray:
    """Each document's tokens, estimated from its characters and its source's tokens per character."""
    ratio = docs["source"].replace_strict(tokens_per_char, default=tokens_per_char[ALL], return_dtype=pl.Float64)
    chars = docs["text"].str.len_chars().to_numpy()
    return np.where(chars > 0, np.maximum(np.rint(chars * ratio.to_numpy()), 1), 0).astype(np.int64)


def tokens_per_char(frame: pl.DataFrame) -> dict[str, float]:
    """Tokens per character, per source and over all, of labelled documents (doc_tokens and text)."""
    chars = frame.with_columns(chars=pl.col("text").str.len_chars())
    per = chars.group_by("source").agg(pl.col("doc_tokens").sum() / pl.col("chars").sum().clip(1))
    return {**dict(per.iter_rows()), ALL: float(chars["doc_tokens"].sum() / max(chars["chars"].sum(), 1))}


def labels(run: StageRun, index: int) -> pl.DataFrame:
    """The LM scores of a shard's sampled units."""
    path = run.rd.score_shard(index)
    if not path.exists():
        raise StageError(f"{path}: no score shard; run `miniplm score` first")
    from miniplm.scoring.score import typed

    columns = LABELS + (["doc_tokens"] if run.job.score.unit == "document" else [])
    rows = pl.from_arrow(typed(pq.read_table(path, columns=columns)))  # an empty shard's columns typed too
    if run.job.proxy_use == "beside":  # the LMs scored every unit: the sample is a part of them
        rows = rows.filter(pl.Series(in_sample(rows["id"], rows["source"], run.context.rates, run.job.seed)))
    return rows


def per_token_targets(frame: pl.DataFrame) -> np.ndarray:
    """The model's targets: (difference, teacher log-prob) per predicted token."""
    n = frame["n_tokens"].to_numpy().astype(np.float64)
    t, r = frame["teacher_logprob"].to_numpy(), frame["reference_logprob"].to_numpy()
    return np.stack([(t - r) / n, t / n], axis=1)


def as_sums(per_token: np.ndarray, n_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (difference, teacher) per token as the score shards' sums: teacher and reference log-probs."""
    n = n_tokens.astype(np.float64)
    teacher = per_token[:, 1] * n
    return teacher, teacher - per_token[:, 0] * n


class Proxy(ShardedStage):
    """A fit once, then one proxy score shard per main-split document shard, on the CPU."""

    name = NAME
    summary = "score every unit with a cheap model fitted to the teacher's and reference's scores of a sample"
    description = (
        "Fit a cheap model (hashed words and word pairs, ridge regression) on the LM scores of proxy's sample, "
        "judge it on held-out sample units, and predict every other unit of the main split on the CPU into "
        "RUN_DIR/proxy/scores/shard-*.parquet, which rank and select read like LM scores."
    )
    sections = ("seed", "score", "proxy")

    def applies(self, job: JobConfig) -> bool:
        return job.proxy is not None and job.teacher is not None and job.reference is not None

    def check(self, job: JobConfig) -> None:
        if job.proxy is None:
            return
        if job.teacher is None or job.reference is None:
            raise ConfigError(
                "proxy: learns the teacher's and the reference's scores of a sample; give `teacher:` and `reference:`"
            )
        if job.proxy.token_counts == "estimated" and job.score.unit != "document":
            raise ConfigError(
                "proxy.token_counts: estimated counts documents' tokens from their characters; score.unit: instance "
                "packs instances from the tokens themselves (use exact)"
            )

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        if job.proxy is None:
            return []
        why = "the proxy is fitted to the LM scores of its sample"
        if job.proxy_use == "instead":
            return [outputs.scores(why), outputs.documents("main")]
        # beside: the LMs scored every unit; the proxy charges the sample's share of that itself
        trained = [outputs.trained("reference")] if job.reference is not None and job.reference.train else []
        return [Upstream("score", ("scores",), why, charged=False), outputs.documents("main"), *trained]

    def spends_compute(self, entry: str) -> bool:
        return True

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        return doc_shard_keys(rd)

    def setup(self, run: StageRun) -> ProxyContext:
        from miniplm.models.loading import load_tokenizer

        job, rd = run.job, run.rd
        if job.proxy is None or job.teacher is None:
            raise ConfigError("proxy: give a `proxy:` section (and `teacher:` and `reference:`)")
        if rd.stage_state("prepare").get("state") != "done":
            raise StageError(f"{rd.root}: no prepared documents; run `miniplm prepare` first")
        tokenizer = load_tokenizer(job.teacher.model)
        tokenizer.model_max_length = sys.maxsize  # counting tokens, not truncating
        boundaries = Boundaries.for_tokenizer(tokenizer) if job.score.unit == "instance" else None
        return ProxyContext(tokenizer, boundaries, rates(source_counts(rd), job.proxy))

    def outputs(self, run: StageRun) -> list[Path]:
        return [folder(run.rd)]

    def shards(self, run: StageRun) -> list[str]:
        return doc_shard_keys(run.rd) or []

    def global_step(self, run: StageRun) -> None:
        fit(run)

    def run_shard(self, run: StageRun, index: int) -> None:
        predict_shard(run, index)

    def finish(self, run: StageRun) -> dict:
        from miniplm.proxy.summary import summarize, write_report

        result = summarize(run)
        write_report(run.rd, result)
        return result

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        from miniplm.proxy.summary import describe

        return describe(job, result)

    def report(self, job: JobConfig, rd: RunDir) -> None:
        from miniplm.proxy.summary import write_report

        state = rd.stage_state(self.name)
        if state.get("state") != "done":
            raise StageError(f"{rd.root}: no proxy scores; run `miniplm proxy` first")
        write_report(rd, state["counts"])


STAGE = Proxy()


def fit(run: StageRun) -> None:
    """Fit the model on the sample's units less the held-out ones; predict those; write the model,
    the held-out units' scores and what the fit cost."""
    job, rd, cfg = run.job, run.rd, run.job.proxy
    frames, scored = [], 0
    for index, path in enumerate(rd.doc_shards("main")):
        rows = labels(run, index)
        scored += pq.read_metadata(rd.score_shard(index)).num_rows
        if rows.height:
            texts = pl.read_parquet(path, columns=["id", "text"]) if job.score.unit == "document" else None
            frames.append(_with_text(job, run.context, index, path, rows, texts))
    sample = pl.concat(frames) if frames else pl.DataFrame()
    _check_sample(rd, run.job, sample, scored)
    # a unit that predicts no token has no score, and one the LMs scored NaN or infinite (which the
    # selection drops) teaches the model nothing
    finite = pl.col("teacher_logprob").is_finite() & pl.col("reference_logprob").is_finite()
    sample = sample.filter((pl.col("n_tokens") >= 1) & finite)
    out = pl.Series(held_out(sample["id"], cfg, job.seed))
    train, test = sample.filter(~out), sample.filter(out)
    if train.height < MIN_TRAIN_UNITS or test.height < MIN_HELDOUT_UNITS:
        raise ConfigError(
            f"proxy: the sample has {sample.height:,} units with tokens, {train.height:,} to fit on and "
            f"{test.height:,} held out ({cfg.holdout_fraction:.0%}); the fit needs at least {MIN_TRAIN_UNITS} and "
            f"its judgement {MIN_HELDOUT_UNITS} (on fewer, rank agreement swings by tenths from seed to seed): "
            f"raise proxy.sample_fraction (now {cfg.sample_fraction}) or give proxy.sample_units"
        )
    model = HashedRidge.from_config(cfg)
    cost = model.fit(train["text"].to_list(), per_token_targets(train))
    predicted, _ = model.predict(test["text"].to_list())
    teacher, reference = as_sums(predicted, test["n_tokens"].to_numpy())
    held = test.drop("text", *INSTANCE_COLUMNS, strict=False).with_columns(
        proxy_teacher_logprob=pl.Series(teacher), proxy_reference_logprob=pl.Series(reference)
    )
    estimate = {}
    if cfg.token_counts == "estimated":  # fitted on the same units as the model; judged on the held-out ones
        ratio = tokens_per_char(train)
        guessed = estimated_tokens(test, ratio)
        estimate = {
            "tokens_per_char": ratio,
            "token_estimate_error": float(guessed.sum() / max(test["doc_tokens"].sum(), 1) - 1),
        }
    model.save(model_folder(rd))
    with atomic_path(holdout(rd)) as tmp:
        held.write_parquet(tmp)
    spent = asdict(cost)
    atomic_write_json(cpu_seconds(rd, "fit"), {"seconds": spent.pop("seconds")})
    atomic_write_json(
        fit_record(rd),
        {"labelled": sample.height, "train": train.height, "held_out": test.height, **spent, **estimate},
    )


def _with_text(
    job: JobConfig, ctx: ProxyContext, index: int, path: Path, rows: pl.DataFrame, texts: pl.DataFrame | None
) -> pl.DataFrame:
    """Labelled units with their text (an instance's: its documents' pieces, rebuilt)."""
    if texts is not None:
        joined = rows.join(texts, on="id", how="left", maintain_order="left")
    else:
        shard = units(job, ctx, index, path).select("id", "text")
        joined = rows.join(shard, on="id", how="left", maintain_order="left")
    if joined["text"].null_count():
        raise StageError(f"{path}: scored units missing from the document shard; were the documents prepared again?")
    return joined


def _check_sample(rd: RunDir, job: JobConfig, sample: pl.DataFrame, scored: int) -> None:
    cfg = job.proxy
    counts = source_counts(rd)
    if not scored:
        raise StageError(
            f"{rd.root}: the proxy has no scored unit to learn from (the main split holds "
            f"{sum(counts.values()):,} documents); check the corpus settings"
        )
    if not sample.height:
        raise ConfigError(
            f"proxy: the sample drew none of the {scored:,} scored units; raise proxy.sample_fraction (now "
            f"{cfg.sample_fraction}) or give proxy.sample_units"
        )
    sampled = set(sample["source"].unique().to_list())
    missing = [name for name in counts if name not in sampled]
    if missing:  # instances are packed source by source: each source has its own
        name = missing[0]
        raise ConfigError(
            f"proxy: source {name!r} ({counts[name]:,} documents in the main split) has no unit in the sample, so "
            f"its scores would be guessed from other sources' alone; raise proxy.min_source_units (now "
            f"{cfg.min_source_units}) or proxy.sample_fraction (now {cfg.sample_fraction})"
        )


def predict_shard(run: StageRun, index: int) -> None:
    """A proxy score shard: the LM scores of the shard's sampled units, the model's for the rest."""
    job, rd = run.job, run.rd
    start = time.perf_counter()
    model = HashedRidge.load(model_folder(rd))
    ratio = json.loads(fit_record(rd).read_text()).get("tokens_per_char")
    shard = units(job, run.context, index, rd.doc_shards("main")[index], ratio)
    lm = labels(run, index).drop("source")
    joined = shard.join(lm, on="id", how="left", maintain_order="left", suffix="_lm")
    # the LMs' own rows as they scored them (estimated counts are for the units they did not score)
    joined = joined.with_columns(
        pl.coalesce(f"{c}_lm", c).alias(c) for c in ("n_tokens", "doc_tokens") if f"{c}_lm" in joined.columns
    ).drop(cs.ends_with("_lm"))
    unlabelled = joined["teacher_logprob"].is_null().to_numpy()
    todo = np.flatnonzero(unlabelled)
    teacher = joined["teacher_logprob"].to_numpy().astype(np.float64, copy=True)
    reference = joined["reference_logprob"].to_numpy().astype(np.float64, copy=True)
    texts, n_tokens, flops = joined["text"], joined["n_tokens"].to_numpy(), 0.0
    step = job.proxy.batch_units
    for begin in range(0, len(todo), step):
        rows = todo[begin : begin + step]
        predicted, spent = model.predict(texts.gather(rows).to_list())
        teacher[rows], reference[rows] = as_sums(predicted, n_tokens[rows])
        flops += spent
    source = np.where(unlabelled, "proxy", "lm")
    table = (
        joined.drop("text")
        .with_columns(teacher_logprob=pl.Series(teacher), reference_logprob=pl.Series(reference))
        .with_columns(score_source=pl.Series(source, dtype=pl.String))
    )
    first = [c for c in ("id", "source", "n_tokens", "doc_tokens") if c in table.columns]
    first += ["teacher_logprob", "reference_logprob", "score_source"]  # as a score shard, then the source
    table = table.select(*first, pl.exclude(*first))
    arrow = table.to_arrow()
    stats = {"predicted": len(todo), "flops": flops}
    atomic_write_json(cpu_seconds(rd, shard_name(index, "")), {"seconds": time.perf_counter() - start})
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), STATS_KEY: json.dumps(stats)})
    path = scores_shard(rd, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")

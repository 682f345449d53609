"""`miniplm score`: teacher and reference log-probabilities for every main-split document.

One score shard per document shard. Within a shard the documents are
tokenized once, cut into windows, and packed into length-sorted batches that
run through both models. Every `checkpoint_every` batches the results so far
are written to the shard's scratch folder; a worker killed at any point
resumes at the first batch not checkpointed, and because the batch plan is a
pure function of the documents, the finished shard is bitwise what an
uninterrupted run writes (on CPU).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from miniplm import outputs
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_path
from miniplm.inputs import Input, Model, Tokenizer
from miniplm.lookups import reference_model
from miniplm.models.loading import check_same_tokenizer, load_model, load_tokenizer, pick_device, resolve_model
from miniplm.models.text_tokens import token_ids
from miniplm.progress import TokenRate
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.job import JobConfig
from miniplm.scoring.instances import Boundaries, pack_documents
from miniplm.scoring.windows import Window, instance_window, prefix_token, windows_for
from miniplm.stage import Part, ShardedStage, StageRun, doc_shard_keys

if TYPE_CHECKING:
    from miniplm.scoring.logprobs import Scorer
    from miniplm.scoring.served import ServedTeacher

NAME = "score"
MODELS = ("teacher", "reference")
ROW_TYPES = {
    "id": pa.string(),
    "source": pa.string(),
    "n_tokens": pa.int64(),
    "doc_tokens": pa.int64(),
    "teacher_logprob": pa.float64(),
    "reference_logprob": pa.float64(),
}


@dataclass
class ShardTokens:
    """A document shard, tokenized: the sequences to score and what each row of output says."""

    index: int
    sequences: list[np.ndarray]  # token ids, without the leading BOS
    rows: dict[str, Any]  # the output's leading columns, one entry per sequence
    first_is_context: bool = False  # instances: the first token is read, not predicted (no BOS)

    def windows(self, max_length: int, stride: int) -> list[Window]:
        if self.first_is_context:  # an instance is at most max_length + 1 tokens: one window
            return [instance_window(d, len(seq)) for d, seq in enumerate(self.sequences) if len(seq) > 1]
        return [w for d, seq in enumerate(self.sequences) for w in windows_for(d, len(seq), max_length, stride)]

    def predicted(self) -> list[int]:
        """Tokens predicted per sequence."""
        return [max(len(s) - self.first_is_context, 0) for s in self.sequences]

    def subset(self, keep: np.ndarray) -> "ShardTokens":
        """The sequences where `keep` is true, with their rows."""
        chosen = np.flatnonzero(keep).tolist()
        rows = {name: [values[i] for i in chosen] for name, values in self.rows.items()}
        return ShardTokens(self.index, [self.sequences[i] for i in chosen], rows, self.first_is_context)


@contextlib.contextmanager
def _reading(path: Path):
    """A damaged document shard stops the stage with its path in the message."""
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        raise StageError(f"{path}: cannot read the document shard: {e}") from None


def tokenize_shard(job: JobConfig, tokenizer, boundaries: Boundaries | None, index: int, path: Path) -> ShardTokens:
    with _reading(path):
        table = pq.read_table(path, columns=["id", "source", "text"])
    ids, sources = table["id"].to_pylist(), table["source"].to_pylist()
    if job.score.unit == "document":
        encoded = token_ids(tokenizer, table["text"].to_pylist())
        sequences = [np.asarray(t[: job.score.max_tokens], dtype=np.int64) for t in encoded]
        return ShardTokens(index, sequences, {"id": ids, "source": sources, "doc_tokens": [len(t) for t in encoded]})
    packed = pack_documents(table["text"].to_pylist(), ids, sources, tokenizer, job.score.max_length, boundaries)
    rows = {"id": [f"{index:05d}-{i:06d}" for i in range(len(packed["input_ids"]))], **packed}
    return ShardTokens(index, rows["input_ids"], rows, first_is_context=True)


def _environment(scorer: Scorer) -> str:
    """What decides the exact floating-point results besides the inputs."""
    import torch

    parts = [scorer.device.type, f"torch {torch.__version__}"]
    parts += [f"{name} {m.dtype} {m.config._attn_implementation}" for name, m in sorted(scorer.models.items())]
    return ", ".join([*parts, scorer.describe()])


def score_shard(
    job: JobConfig,
    shard: ShardTokens,
    scorer: Scorer,
    rd: RunDir,
    progress: TokenRate,
    teacher: ServedTeacher | None = None,
) -> pa.Table:
    """A shard's rows; the teacher in `scorer` with the reference, or behind a server (`teacher`)."""
    from miniplm.batch_checkpoints import BatchCheckpoints

    cfg = job.score
    windows = shard.windows(cfg.max_length, cfg.stride)
    batches = scorer.plan(windows)
    folder = rd.work(NAME) / shard_name(shard.index, "")
    environment = _environment(scorer) + (f", {teacher.describe()}" if teacher is not None else "")
    checkpoints = BatchCheckpoints(folder, environment)
    done, results = checkpoints.load()
    # documents with nothing to score, and those finished before a restart
    progress.update(
        sum(n == 0 for n in shard.predicted())
        + sum(w.end == len(shard.sequences[w.doc]) for w in windows if (w.doc, w.start) in results)
    )

    todo = [w for b in batches[done:] for w in b]  # the teacher's windows, sent ahead from a thread of their own
    served = teacher.start(folder / "teacher-requests", todo, shard.sequences) if teacher is not None else None

    def scored() -> Iterator[list[dict]]:
        for b, per_model in enumerate(scorer.run(batches[done:], shard.sequences), start=done):
            batch, rows = batches[b], []
            if served is not None:
                per_model["teacher"] = served.take(batch)
            for i, w in enumerate(batch):
                row = {"doc": w.doc, "start": w.start}
                for name in MODELS:
                    lp = per_model[name][i]
                    row[f"{name}_logprob"] = float(lp.double().sum())
                    if cfg.save_token_logprobs:
                        row[f"{name}_token_logprobs"] = lp.float().tolist()
                rows.append(row)
            progress.update(sum(w.end == len(shard.sequences[w.doc]) for w in batch), sum(w.scored for w in batch))
            yield rows

    try:
        checkpoints.keep(
            scored(),
            done,
            len(batches),
            cfg.checkpoint_every,
            lambda first, last, rows: checkpoints.save_rows(first, last, rows, results),
        )
    finally:
        if served is not None:
            served.close()
    return _assemble(job, shard, windows, results)


def _assemble(job: JobConfig, shard: ShardTokens, windows: list[Window], results: dict) -> pa.Table:
    """Per-sequence sums, adding each sequence's windows in order."""
    n = len(shard.sequences)
    sums = {name: np.zeros(n, dtype=np.float64) for name in MODELS}
    tokens: dict[str, list[list[float]]] = {name: [[] for _ in range(n)] for name in MODELS}
    for w in sorted(windows, key=lambda w: (w.doc, w.start)):
        r = results[(w.doc, w.start)]
        for name in MODELS:
            sums[name][w.doc] += r[f"{name}_logprob"]
            if job.score.save_token_logprobs:
                tokens[name][w.doc].extend(r[f"{name}_token_logprobs"])
    columns: dict[str, Any] = {
        "id": shard.rows["id"],
        **({"source": shard.rows["source"]} if "source" in shard.rows else {}),
        "n_tokens": shard.predicted(),
        **({"doc_tokens": shard.rows["doc_tokens"]} if "doc_tokens" in shard.rows else {}),
        "teacher_logprob": sums["teacher"],
        "reference_logprob": sums["reference"],
    }
    if job.score.save_token_logprobs:
        for name in MODELS:
            columns[f"{name}_token_logprobs"] = pa.array(tokens[name], pa.list_(pa.float32()))
    if "docs" in shard.rows:  # instances: their tokens and provenance
        columns["input_ids"] = pa.array(shard.rows["input_ids"], pa.list_(pa.int32()))
        columns["docs"] = shard.rows["docs"]
    return typed(pa.table(columns))


def typed(table: pa.Table) -> pa.Table:
    """A score shard's columns in their types even when it is empty (a proxy's sample may draw none of
    a shard's units): a null-typed column would not join or concatenate with the other shards'."""
    return table.cast(pa.schema([pa.field(f.name, ROW_TYPES.get(f.name, f.type)) for f in table.schema]))


@dataclass
class ScoreContext:
    """The teacher's tokenizer (the reference's is checked equal), the token that starts each window,
    and for instances where a sentence may end."""

    tokenizer: Any
    bos: int | None
    boundaries: Boundaries | None
    sample_rates: dict[str, float] | None = None  # proxy.use instead: each source's share the LMs label

    def labelled(self, shard: ShardTokens, seed: int) -> ShardTokens:
        """The units the LMs score: all of them, or the proxy's sample."""
        if self.sample_rates is None:
            return shard
        import polars as pl

        from miniplm.scoring.sample import in_sample

        ids, sources = pl.Series(shard.rows["id"], dtype=pl.String), pl.Series(shard.rows["source"], dtype=pl.String)
        return shard.subset(in_sample(ids, sources, self.sample_rates, seed))


class Score(ShardedStage):
    """Its shards are the main split's document shards; a killed worker resumes inside its shard."""

    name = NAME
    summary = "teacher and reference log-probabilities for every main-split document"
    description = (
        "Run the teacher and the reference over every main-split shard and write "
        "RUN_DIR/scores/shard-*.parquet (id, n_tokens, teacher_logprob, reference_logprob). "
        "Resumes inside a shard after a kill."
    )
    sections = ("seed", "corpus", "teacher", "reference", "score")

    def applies(self, job: JobConfig) -> bool:
        return job.teacher is not None and job.reference is not None

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        """The main split, the teacher and the reference by content (and as the output of train-reference
        when this run trains it): the outputs depend on the weights too, not only on the job file."""
        if job.teacher is None or job.reference is None:
            return []
        trained = [outputs.trained("reference")] if job.reference.train is not None else []
        # behind a server, the teacher's weights are the server's (named in the settings); here its tokenizer
        served = job.score.teacher_server is not None
        return [
            outputs.documents("main"),
            (Tokenizer if served else Model)("teacher", resolve_model(job.teacher.model)),
            Model("reference", resolve_model(reference_model(job))),
            *trained,
            *([sample_setting(job)] if job.proxy_use == "instead" else []),
        ]

    def spends_compute(self, entry: str) -> bool:
        return True

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str] | None:
        return doc_shard_keys(rd)

    def setup(self, run: StageRun) -> ScoreContext:
        job, rd = run.job, run.rd
        if job.teacher is None or job.reference is None:
            raise ConfigError("score needs both `teacher: {model: ...}` and `reference: {model: ...}` in the job")
        if rd.stage_state("prepare").get("state") != "done":
            raise StageError(f"{rd.root}: no prepared documents; run `miniplm prepare` first")
        # Tokenizers first: a mismatch must fail before gigabytes of weights load.
        tokenizer = load_tokenizer(job.teacher.model)
        reference = reference_model(job)
        if not Path(reference).exists() and job.reference.train is not None:
            raise StageError(f"{rd.root}: the reference is trained in this run; run `miniplm train-reference` first")
        check_same_tokenizer(job.teacher.model, reference, tokenizer, load_tokenizer(reference))
        tokenizer.model_max_length = sys.maxsize  # documents are windowed here, not truncated
        boundaries = None
        if job.score.unit == "instance":
            if tokenizer.eos_token_id is None:
                raise ConfigError(f"score.unit: instance joins documents with EOS, and {job.teacher.model!r} has none")
            boundaries = Boundaries.for_tokenizer(tokenizer)
        if job.score.teacher_server is not None:  # a wrong URL, key or model name stops here, before any shard
            from miniplm.scoring.served import ServedTeacher

            ServedTeacher(job.score.teacher_server, prefix_token(tokenizer, job.teacher.model)).check()
        sample_rates = None
        if job.proxy_use == "instead":
            from miniplm.scoring.sample import rates, source_counts

            sample_rates = rates(source_counts(rd), job.proxy)
        return ScoreContext(tokenizer, prefix_token(tokenizer, job.teacher.model), boundaries, sample_rates)

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.scores]

    def shards(self, run: StageRun) -> list[str]:
        return doc_shard_keys(run.rd) or []

    def run_shards(self, run: StageRun, todo: list[int]) -> None:
        doc_shards = run.rd.doc_shards("main")
        _score_shards(run, [(i, doc_shards[i]) for i in todo])

    def finish(self, run: StageRun) -> dict:
        return _counts(run.rd) | {"flops": _flops(run.job, run.rd)}

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        flops = f", {result['flops']['total']:.3g} FLOPs" if "flops" in result else ""
        return [f"score: {result['rows']:,} rows, {result['tokens']:,} tokens scored{flops}, in {job.run_dir}/scores"]


STAGE = Score()


def _score_shards(run: StageRun, shards: list[tuple[int, Path]]) -> None:
    job, rd = run.job, run.rd
    ctx: ScoreContext = run.context
    tokenizer, bos, boundaries = ctx.tokenizer, ctx.bos, ctx.boundaries
    from miniplm.models.kernels import use_packing
    from miniplm.scoring.logprobs import Scorer

    cfg = job.score
    device = pick_device(cfg.device)
    packed = use_packing(cfg.packing, device)
    models, teacher = {}, None
    if cfg.teacher_server is not None:
        from miniplm.scoring.served import ServedTeacher

        teacher = ServedTeacher(cfg.teacher_server, bos)
    else:
        models["teacher"] = load_model(job.teacher.model, job.teacher.dtype, device, packed=packed, kernels=cfg.kernels)
    models["reference"] = load_model(
        reference_model(job), job.reference.dtype, device, packed=packed, kernels=cfg.kernels
    )
    scorer = Scorer(
        models, bos, device, packed=packed, batch_tokens=cfg.batch_tokens, kernels=cfg.kernels, compile=cfg.compile
    )
    total = None
    if job.score.unit == "document" and ctx.sample_rates is None:
        total = 0
        for _, path in shards:
            with _reading(path):
                total += pq.read_metadata(path).num_rows
    bar = tqdm(
        total=total,
        desc="score",
        unit="doc" if total is not None else "instance",
        disable=not run.show_progress,
        dynamic_ncols=True,
    )
    progress = TokenRate(bar)
    # Tokenizing the next shard overlaps with scoring this one (the tokenizer releases the GIL).
    with ThreadPoolExecutor(1) as pool, bar:
        upcoming = pool.submit(tokenize_shard, job, tokenizer, boundaries, *shards[0])
        for k in range(len(shards)):
            shard = ctx.labelled(upcoming.result(), job.seed)
            if k + 1 < len(shards):
                upcoming = pool.submit(tokenize_shard, job, tokenizer, boundaries, *shards[k + 1])
            table = score_shard(job, shard, scorer, rd, progress, teacher)
            with atomic_path(rd.score_shard(shard.index)) as tmp:
                pq.write_table(table, tmp, compression="zstd")
            run.mark_done(shard_name(shard.index, ""))
            shutil.rmtree(rd.work(NAME) / shard_name(shard.index, ""), ignore_errors=True)


def sample_setting(job: JobConfig) -> str:
    """The proxy settings that decide which units the LMs score: part of the scores' config hash."""
    p = job.proxy
    return f"proxy sample: fraction {p.sample_fraction}, units {p.sample_units}, min per source {p.min_source_units}"


def _flops(job: JobConfig, rd: RunDir) -> dict:
    """What teacher and reference spent on every scored unit (scoring/cost.py)."""
    import polars as pl

    from miniplm.compute import record

    files = sorted(rd.scores.glob("shard-*.parquet"))
    n_tokens = pl.scan_parquet(files).select("n_tokens").collect()["n_tokens"].to_numpy() if files else np.zeros(0)
    return record(**lm_flops(job, n_tokens))


def lm_flops(job: JobConfig, n_tokens: np.ndarray) -> dict[str, float]:
    """What the teacher and the reference spend scoring units that predict `n_tokens` tokens each."""
    from miniplm.models.flops import model_flops
    from miniplm.scoring.cost import scoring_flops

    cfg = job.score
    return {
        name: scoring_flops(n_tokens, cfg.unit, cfg.max_length, cfg.stride, model_flops(model))
        for name, model in (("teacher", job.teacher.model), ("reference", reference_model(job)))
    }


def _counts(rd: RunDir) -> dict:
    import polars as pl

    files = sorted(rd.scores.glob("shard-*.parquet"))
    if not files:  # an empty main split
        return {"rows": 0, "tokens": 0, "shards": 0}
    row = pl.scan_parquet(files).select(pl.len().alias("rows"), pl.col("n_tokens").sum().alias("tokens")).collect()
    return {"rows": row["rows"][0], "tokens": int(row["tokens"][0] or 0), "shards": len(files)}

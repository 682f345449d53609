"""`miniplm eval`: every model the job names, on the held-out split, extra corpora and zero-shot tasks.

Models are the stage's shards: each worker (or array task) evaluates its
share into RUN_DIR/eval/models/NAME.json, and the last one writes the
comparison across models (results.json, comparison.md, comparison.png) and
rebuilds the selection report, which shows it. Beside the models, a unigram
of each token set the compared students trained on (unigram.py) is a shard
of its own, `unigram (NAME)`: the floor their losses are read against.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from miniplm import outputs
from miniplm.compute import record, student_compute
from miniplm.errors import ConfigError, StageError
from miniplm.files import atomic_write_json
from miniplm.inputs import Files, Input, Model
from miniplm.lookups import expand_input, reference_model
from miniplm.models.loading import resolve_model
from miniplm.paths import walk_files
from miniplm.replicas import replicas
from miniplm.rundir import RunDir
from miniplm.schema.eval import EvalModel
from miniplm.schema.job import JobConfig
from miniplm.stage import Part, ShardedStage, StageRun

NAME = "eval"
DEFAULT_MAX_LENGTH = 1024


@dataclass(frozen=True)
class Target:
    name: str
    model: str  # a folder, hub id or smollm2-135m (a unigram's: the student whose tokenizer reads its text)
    role: str  # student, reference, teacher, baseline, unigram
    max_length: int
    trained_on: str = ""  # a student's token set, and how it distilled
    train_stage: str | None = None  # the manifest entry that made it, when this run trained it
    tokens: str = ""  # a student's (or a unigram's) token set


def targets(job: JobConfig) -> list[Target]:
    """The models to evaluate, in the job's order, each once."""
    assert job.eval is not None
    cfg = job.eval
    rd = RunDir(job.run_dir)
    seq_len = {t.name: t.seq_len for t in job.tokenize}
    out: dict[str, Target] = {}
    names = {"reference", "teacher", *(s.name for s in job.students)}
    for entry in cfg.models:
        if isinstance(entry, EvalModel) and entry.name in names:
            raise ConfigError(f"eval.models: {entry.name!r} names a model of the job already; give it another name")
        if isinstance(entry, EvalModel):
            out[entry.name] = Target(entry.name, entry.model, "baseline", cfg.max_length or DEFAULT_MAX_LENGTH)
        elif entry in ("students", *(s.name for s in job.students)):
            for student in job.students if entry == "students" else [s for s in job.students if s.name == entry]:
                kd = f" + KD ({student.kd.loss}, {student.kd.source})" if student.kd is not None else ""
                for s in replicas(job, student):
                    out[s.name] = Target(
                        s.name,
                        str(rd.model(s.name)),
                        "student",
                        cfg.max_length or seq_len.get(s.tokens, DEFAULT_MAX_LENGTH),
                        s.tokens + kd,
                        outputs.trained(s.name).stage,
                        s.tokens,
                    )
        elif entry == "reference":
            if job.reference is None:
                raise ConfigError("eval.models: the job has no reference")
            trained = job.reference.train
            out["reference"] = Target(
                "reference",
                reference_model(job),
                "reference",
                cfg.max_length or (trained.seq_len if trained else DEFAULT_MAX_LENGTH),
                "reference" if trained else "",
                outputs.trained("reference").stage if trained else None,
            )
        elif entry == "teacher":
            if job.teacher is None:
                raise ConfigError("eval.models: the job has no teacher")
            out["teacher"] = Target("teacher", job.teacher.model, "teacher", cfg.max_length or DEFAULT_MAX_LENGTH)
    return list(out.values())


def unigrams(models: list[Target]) -> list[Target]:
    """A unigram row per distinct token set the students among `models` trained on (seed replicas and
    students distilled on the same set share one), read with the tokenizer and `max_length` of the
    first student on it, so that it is scored on exactly the targets they are."""
    out: dict[str, Target] = {}
    for t in models:
        if t.role == "student" and t.tokens not in out:
            out[t.tokens] = Target(f"unigram ({t.tokens})", t.model, "unigram", t.max_length, t.tokens, tokens=t.tokens)
    return list(out.values())


def rows(job: JobConfig) -> list[Target]:
    """The comparison's rows, each a shard of the stage: the models, then the unigram floors."""
    models = targets(job)
    return models + unigrams(models)


def _reads(job: JobConfig, models: list[Target]) -> list[Input]:
    """What the results depend on besides the eval section: each model's content (and the training
    that made it, for one trained here), the held-out documents, extra corpora and task files."""
    assert job.eval is not None
    reads: list[Input] = []
    for t in models:
        if t.role == "unigram":  # its tokenizer is its student's model, read as that student's row
            reads += [
                f"{t.name}:{t.max_length}",
                outputs.tokens(t.tokens, why=f"eval counts the tokens of token set {t.tokens!r}"),
            ]
            continue
        reads += [f"{t.name}:{t.max_length}", Model(f"model {t.name}", resolve_model(t.model))]
        if t.train_stage is not None:
            reads.append(outputs.trained(t.name))
    if job.eval.heldout:
        reads.append(
            outputs.documents(
                "heldout", why="eval measures held-out loss on the prepared held-out split (or set eval.heldout: false)"
            )
        )
    reads += [
        Files(f"eval.corpora.{i}", tuple(expand_input(c)))
        for i, c in enumerate(job.eval.corpora)
        if c.format != "hf_hub"
    ]
    for i, path in enumerate(job.eval.task_paths):  # lm-eval says what is wrong with a path that is not there
        files = walk_files(path) if os.path.isdir(path) else [path] if os.path.isfile(path) else []
        reads.append(Files(f"eval.task_paths.{i}", tuple(files)))
    return reads


def _corpora(job: JobConfig, rd: RunDir) -> dict[str, Callable[[], list[str]]]:
    """The held-out texts every row is read on, by corpus name."""
    from miniplm.evaluation.heldout import corpus_texts, heldout_texts, take

    cfg = job.eval
    corpora = {"heldout": lambda: take(heldout_texts(rd), cfg.max_docs)} if cfg.heldout else {}
    return corpora | {
        c.source_name: (lambda c=c: take(corpus_texts(c, job.corpus.max_chars), cfg.max_docs)) for c in cfg.corpora
    }


def evaluate_model(job: JobConfig, rd: RunDir, target: Target, show_progress: bool) -> dict:
    from miniplm.evaluation.harness import zero_shot
    from miniplm.evaluation.heldout import lm_loss
    from miniplm.models.loading import load_model, load_tokenizer, pick_device

    cfg = job.eval
    device = pick_device(cfg.device)
    tokenizer = load_tokenizer(target.model)
    model = load_model(target.model, "auto", device)
    result: dict = {
        "model": target.model,
        "role": target.role,
        "trained_on": target.trained_on,
        "max_length": target.max_length,
        "lm": {},
    }
    for name, texts in _corpora(job, rd).items():
        result["lm"][name] = lm_loss(
            model,
            tokenizer,
            texts(),
            max_length=target.max_length,
            stride=min(cfg.stride, target.max_length - 1),
            batch_tokens=cfg.batch_tokens,
            device=device,
            desc=f"eval {target.name} {name}",
            show_progress=show_progress,
        )
    # lm-eval's zero-shot tasks are not counted: the harness does not say what it ran
    result["flops"] = record(**{name: lm.pop("flops") for name, lm in result["lm"].items()})
    if cfg.tasks:
        result["zero_shot"] = zero_shot(
            model,
            tokenizer,
            cfg.tasks,
            task_paths=cfg.task_paths,
            limit=cfg.limit,
            num_fewshot=cfg.num_fewshot,
            batch_size=cfg.batch_size,
            max_length=target.max_length,
        )
    del model
    gc.collect()
    return result


def evaluate_unigram(job: JobConfig, rd: RunDir, target: Target, show_progress: bool) -> dict:
    """A unigram row: the token set's counts, scored on every corpus as its students are."""
    from miniplm.evaluation.unigram import log_probs, token_counts, unigram_loss
    from miniplm.models.loading import load_tokenizer

    tokenizer = load_tokenizer(target.model)
    counts = token_counts(rd.tokens(target.tokens), len(tokenizer))
    logp = log_probs(counts)
    lm = {
        name: unigram_loss(
            logp,
            tokenizer,
            texts(),
            max_length=target.max_length,
            stride=min(job.eval.stride, target.max_length - 1),
            desc=f"eval {target.name} {name}",
            show_progress=show_progress,
        )
        for name, texts in _corpora(job, rd).items()
    }
    return {
        "model": str(rd.tokens(target.tokens)),
        "role": "unigram",
        "trained_on": target.trained_on,
        "max_length": target.max_length,
        "unigram": {"tokens": int(counts.sum()), "vocab": len(counts)},
        "lm": lm,
        "flops": record(**{name: r.pop("flops") for name, r in lm.items()}),
    }


@dataclass
class EvalContext:
    rows: list[Target]  # the comparison's rows: the models, then the unigram floors


class Eval(ShardedStage):
    """Its shards are the models: each worker (or array task) evaluates its share."""

    name = NAME
    summary = "held-out loss, perplexity and zero-shot accuracy of the job's models, compared"
    description = (
        "Evaluate every model eval.models names (students, the reference, the teacher, any checkpoint): "
        "loss and perplexity per token on the held-out split and eval.corpora, zero-shot accuracy on "
        "eval.tasks through lm-evaluation-harness; beside them, the unigram of each token set the students "
        "trained on, a floor read the same way. Writes RUN_DIR/eval/ (results.json, comparison.md, "
        "comparison.png) and adds the comparison to the report. Models split over workers like shards."
    )
    sections = ("seed", "eval")  # plus the models' fingerprints and the held-out documents
    unit = "models"

    def applies(self, job: JobConfig) -> bool:
        return job.eval is not None

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        return _reads(job, rows(job)) if job.eval is not None else []

    def spends_compute(self, entry: str) -> bool:
        return True

    def check(self, job: JobConfig) -> None:
        """A model named by a word is a student of the job, all of them, the reference or the teacher."""
        if job.eval is None:
            return
        students = {s.name for s in job.students}
        for m in job.eval.models:
            if isinstance(m, str) and m not in ("students", "reference", "teacher") and m not in students:
                raise ConfigError(
                    f"eval.models: {m!r} is no student of the job; name a student, students, "
                    "reference, teacher, or give {name: ..., model: PATH}"
                )

    def planned_shards(self, job: JobConfig, rd: RunDir, part: Part) -> list[str]:
        return [t.name for t in rows(job)]

    def setup(self, run: StageRun) -> EvalContext:
        job, rd = run.job, run.rd
        if job.eval is None:
            raise ConfigError(
                "eval: the job has no `eval:` section (eval: {models: [students]} evaluates every student)"
            )
        models = targets(job)
        if not models:
            raise ConfigError("eval.models: nothing to evaluate (the job lists no students)")
        if job.eval.tasks:
            from miniplm.evaluation.harness import require_lm_eval

            require_lm_eval()
        for t in models:
            if t.train_stage is not None and rd.stage_state(t.train_stage).get("state") != "done":
                raise StageError(
                    f"{rd.root}: eval of {t.name!r} needs its training; run `miniplm "
                    f"{'train-reference' if t.role == 'reference' else 'train'}` first"
                )
        return EvalContext(models + unigrams(models))

    def outputs(self, run: StageRun) -> list[Path]:
        return [run.rd.eval]

    def shards(self, run: StageRun) -> list[str]:
        return [t.name for t in run.context.rows]

    def run_shard(self, run: StageRun, index: int) -> None:
        target = run.context.rows[index]
        evaluate = evaluate_unigram if target.role == "unigram" else evaluate_model
        atomic_write_json(run.rd.eval_result(target.name), evaluate(run.job, run.rd, target, run.show_progress))

    def finish(self, run: StageRun) -> dict:
        from miniplm.evaluation import compare

        rd = run.rd
        results = {t.name: json.loads(rd.eval_result(t.name).read_text()) for t in run.context.rows}
        charged = student_compute(run.job, rd)
        for name, result in results.items():
            result["compute"] = charged.get(name)
        compare.write(rd, results)
        compare.report(run.job, rd)
        return compare.summary(results) | {"flops": record(**{n: r["flops"]["total"] for n, r in results.items()})}

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        from miniplm.evaluation.compare import markdown

        results = json.loads(RunDir(job.run_dir).eval_results.read_text())
        models = sum(r["role"] != "unigram" for r in results.values())
        return [
            f"eval: {models} models; {job.run_dir}/eval/comparison.md:",
            markdown(results).rstrip(),
            f"compare: {job.run_dir}/eval/comparison.png (each student's held-out loss and accuracy against its "
            "training FLOPs and against its total FLOPs)",
        ]

    def report(self, job: JobConfig, rd: RunDir) -> None:
        from miniplm.evaluation import compare

        compare.report(job, rd)


STAGE = Eval()

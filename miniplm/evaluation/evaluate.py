"""`miniplm eval`: every model the job names, on the held-out split, extra corpora and zero-shot tasks.

Models are the stage's shards: each worker (or array task) evaluates its
share into RUN_DIR/eval/models/NAME.json, and the last one writes the
comparison across models (results.json, comparison.md, comparison.png) and
rebuilds the selection report, which shows it.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path

from miniplm.config import ConfigError, EvalModel, JobConfig, dump_job, reference_model, stage_config_hash
from miniplm.models.loading import load_model, load_tokenizer, model_fingerprint, pick_device
from miniplm.rundir import RunDir, StageError, Worker, atomic_write_json

STAGE = "eval"
DEFAULT_MAX_LENGTH = 1024


@dataclass(frozen=True)
class Target:
    name: str
    model: str  # a folder, hub id or smollm2-135m
    role: str  # student, reference, teacher, baseline
    max_length: int
    trained_on: str = ""  # a student's token set
    train_stage: str | None = None  # the manifest entry that made it, when this run trained it


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
            for s in job.students if entry == "students" else [s for s in job.students if s.name == entry]:
                out[s.name] = Target(s.name, str(rd.root / "models" / s.name), "student",
                                     cfg.max_length or seq_len.get(s.tokens, DEFAULT_MAX_LENGTH), s.tokens,
                                     f"train/{s.name}")
        elif entry == "reference":
            if job.reference is None:
                raise ConfigError("eval.models: the job has no reference")
            trained = job.reference.train
            out["reference"] = Target("reference", reference_model(job), "reference",
                                      cfg.max_length or (trained.seq_len if trained else DEFAULT_MAX_LENGTH),
                                      "reference" if trained else "", "train/reference" if trained else None)
        elif entry == "teacher":
            if job.teacher is None:
                raise ConfigError("eval.models: the job has no teacher")
            out["teacher"] = Target("teacher", job.teacher.model, "teacher", cfg.max_length or DEFAULT_MAX_LENGTH)
    return list(out.values())


def _config_hash(job: JobConfig, rd: RunDir, models: list[Target]) -> str:
    facts = []
    for t in models:
        if t.train_stage is not None:
            state = rd.stage_state(t.train_stage)
            if state.get("state") != "done":
                raise StageError(f"{rd.root}: eval of {t.name!r} needs its training; run `miniplm "
                                 f"{'train-reference' if t.role == 'reference' else 'train'}` first")
            facts.append(f"{t.name}:{state['config_hash']}")
        facts.append(f"{t.name}={model_fingerprint(t.model)}:{t.max_length}")
    if job.eval.heldout:
        try:
            facts.append((rd.docs / "stats.json").read_text())
        except FileNotFoundError:
            raise StageError(f"{rd.root}: no prepared documents for held-out loss; run `miniplm prepare` first "
                             "(or set eval.heldout: false)") from None
    return stage_config_hash(job, STAGE, *facts)


def result_path(rd: RunDir, name: str) -> Path:
    return rd.root / "eval" / "models" / f"{name}.json"


def evaluate_model(job: JobConfig, rd: RunDir, target: Target, show_progress: bool) -> dict:
    from miniplm.evaluation.harness import zero_shot
    from miniplm.evaluation.heldout import corpus_texts, heldout_texts, lm_loss, take

    cfg = job.eval
    device = pick_device(cfg.device)
    tokenizer = load_tokenizer(target.model)
    model = load_model(target.model, "auto", device)
    corpora = {"heldout": lambda: heldout_texts(rd)} if cfg.heldout else {}
    corpora |= {c.source_name: (lambda c=c: corpus_texts(c, job.corpus.max_chars)) for c in cfg.corpora}
    result: dict = {"model": target.model, "role": target.role, "trained_on": target.trained_on,
                    "max_length": target.max_length, "lm": {}}
    for name, texts in corpora.items():
        result["lm"][name] = lm_loss(model, tokenizer, take(texts(), cfg.max_docs), max_length=target.max_length,
                                     stride=min(cfg.stride, target.max_length - 1), batch_tokens=cfg.batch_tokens,
                                     device=device, desc=f"eval {target.name} {name}", show_progress=show_progress)
    if cfg.tasks:
        result["zero_shot"] = zero_shot(model, tokenizer, cfg.tasks, task_paths=cfg.task_paths, limit=cfg.limit,
                                        num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size,
                                        max_length=target.max_length)
    del model
    gc.collect()
    return result


def run(job: JobConfig, worker: Worker = Worker(), *, force: bool = False, show_progress: bool = True) -> dict | None:
    """Evaluate this worker's share of the models; the comparison once all are done (None before)."""
    if job.eval is None:
        raise ConfigError("eval: the job has no `eval:` section (eval: {models: [students]} evaluates every student)")
    rd = RunDir(job.run_dir)
    models = targets(job)
    if not models:
        raise ConfigError("eval.models: nothing to evaluate (the job lists no students)")
    if job.eval.tasks:
        from miniplm.evaluation.harness import require_lm_eval

        require_lm_eval()
    config_hash = _config_hash(job, rd, models)
    if rd.open_stage(STAGE, config_hash, dump_job(job), [rd.root / "eval"], force=force):
        return rd.stage_state(STAGE)["counts"]
    try:
        for i in worker.owned(len(models)):
            if not rd.is_done(STAGE, models[i].name, config_hash):
                atomic_write_json(result_path(rd, models[i].name), evaluate_model(job, rd, models[i], show_progress))
                rd.mark_done(STAGE, models[i].name, config_hash)
        if not all(rd.is_done(STAGE, t.name, config_hash) for t in models):
            return None
        rd.finish_once(STAGE, lambda: _finish(job, rd, models))
    except Exception as e:  # anything but an interrupt: the manifest must not say running
        rd.fail_stage(STAGE, str(e))
        raise
    return rd.stage_state(STAGE)["counts"]


def _finish(job: JobConfig, rd: RunDir, models: list[Target]) -> dict:
    from miniplm.evaluation import compare

    results = {t.name: json.loads(result_path(rd, t.name).read_text()) for t in models}
    compare.write(rd, results)
    if rd.stage_state("select").get("state") == "done":
        from miniplm.selection.select import rebuild_report

        rebuild_report(job)
    return compare.summary(results)

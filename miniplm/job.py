"""A job as the commands take it: the job file read against the schema (jobfile.py), then checked
against the stage registry and the filesystem, so that a job that cannot work fails in the first
second, before any model is loaded."""

from __future__ import annotations

import os

from miniplm.errors import ConfigError
from miniplm.jobfile import job_label, read_job
from miniplm.lookups import expand_input, teacher_model, token_set_named, tokenizer_name
from miniplm.models.loading import check_same_tokenizer, load_tokenizer, looks_loadable
from miniplm.schema.job import JobConfig
from miniplm.stages import check_job


def _check_models(job: JobConfig, where: str) -> None:
    models = [
        (f"{key}.model", spec.model)
        for key in ("teacher", "reference")
        if (spec := getattr(job, key)) is not None and spec.model is not None
    ]
    models += [
        (f"{section}.{e.name}.model", e.model) for section in ("generate", "prune") for e in getattr(job, section)
    ]
    models += [(f"students.{s.name}.kd.teacher", s.kd.teacher) for s in job.students if s.kd is not None]
    models += [(f"teacher_logits.{t.name}.teacher", t.teacher) for t in job.teacher_logits]
    for key, model in models:
        if model == "teacher":
            continue
        if not looks_loadable(model):
            raise ConfigError(
                f"{where}: {key}: no model folder at {model!r} (give a folder, a hub id like org/name, or smollm2-135m)"
            )
        if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
            raise ConfigError(
                f"{where}: {key}: the folder {model!r} holds no model (no config.json; "
                "a save_pretrained folder has one)"
            )
    pruned = {p.name for p in job.prune}
    for i, student in enumerate(job.students):
        if student.init is None or student.init in pruned:
            continue
        if not os.path.isdir(student.init):
            raise ConfigError(
                f"{where}: students.{i}.init: {student.init!r} is neither a prune entry of the job "
                f"(prune: {', '.join(sorted(pruned)) or 'none'}) nor a model folder"
            )
        if not os.path.isfile(os.path.join(student.init, "config.json")):
            raise ConfigError(
                f"{where}: students.{i}.init: the folder {student.init!r} holds no model "
                "(no config.json; a save_pretrained folder has one)"
            )


def _check_init_tokenizers(job: JobConfig, where: str) -> None:
    """A student that starts from trained weights reads its token set's ids as those weights learnt
    them: the model it starts from (a folder, or a prune entry's model) must share the token set's
    tokenizer. One that cannot be read yet (a hub id offline) is left alone."""
    prune = {p.name: p for p in job.prune}
    for student in job.students:
        if student.init is None:
            continue
        origin = teacher_model(job, prune[student.init].model)[0] if student.init in prune else student.init
        tokens = tokenizer_name(job, token_set_named(job, student.tokens))
        if origin == tokens:
            continue
        try:
            tok_init, tok_set = load_tokenizer(origin), load_tokenizer(tokens)
        except OSError:
            continue
        try:
            check_same_tokenizer(
                origin,
                tokens,
                tok_init,
                tok_set,
                first="the model",
                role=f"the tokenizer of token set {student.tokens!r},",
                advice="Start the student from a model with the token set's tokenizer, or tokenize with the model's.",
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: students.{student.name}.init: {e}") from None


def _check_inputs_exist(job: JobConfig, where: str) -> None:
    inputs = [(f"corpus.inputs.{i}", spec) for i, spec in enumerate(job.corpus.inputs)]
    inputs += [(f"eval.corpora.{i}", spec) for i, spec in enumerate(job.eval.corpora if job.eval else [])]
    for key, spec in inputs:
        if spec.format == "hf_hub":
            continue  # a hub name: only loading can tell whether it exists
        if not expand_input(spec):
            raise ConfigError(f"{where}: {key}.path: nothing found at {spec.path!r} (relative to {os.getcwd()})")


def load_job(path: str | os.PathLike, overrides: list[str] | None = None) -> JobConfig:
    """Read, override and validate a job file; raise ConfigError naming the file and key."""
    job = read_job(path, overrides)
    where = job_label(path, overrides)
    _check_models(job, where)  # before the stages' checks, which may read the models' tokenizers
    try:
        check_job(job)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    _check_init_tokenizers(job, where)
    _check_inputs_exist(job, where)
    return job

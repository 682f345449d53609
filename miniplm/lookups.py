"""What a job's names and paths stand for: the files an input names, the models and token sets
that entries name (the teacher, a prune entry's output, the reference this run trains)."""

from __future__ import annotations

import glob
import os

from miniplm.errors import ConfigError
from miniplm.paths import glob_paths, walk_files
from miniplm.rundir import RunDir
from miniplm.schema.base import ModelSpec
from miniplm.schema.corpus import InputSpec
from miniplm.schema.generate import GenerateConfig
from miniplm.schema.job import JobConfig
from miniplm.schema.prune import PruneConfig
from miniplm.schema.students import StudentConfig
from miniplm.schema.tokenize import TokenSet


def expand_input(spec: InputSpec) -> list[str]:
    """The sorted files (or dataset folder) an input names, each once; empty when nothing matches.

    Paths keep the form the job wrote them in, so ids derived from them are
    the same on every machine that runs the job from the same directory.
    Folders are walked through symbolic links, each real folder once.
    """
    if spec.format == "hf_hub":
        return [spec.path]
    if spec.format == "hf_disk":
        return [spec.path] if os.path.isdir(spec.path) else []
    matches = glob_paths(spec.path) if glob.has_magic(spec.path) else [spec.path]
    files: list[str] = []
    for m in matches:
        if os.path.isdir(m):
            files.extend(walk_files(m))
        elif os.path.lexists(m):
            files.append(m)
    return list(dict.fromkeys(files))


def reference_model(job: JobConfig) -> str:
    """The reference to score with: the given checkpoint, or the one this run trains."""
    if job.reference is None:
        raise ConfigError("the job has no `reference:`")
    return job.reference.model or str(RunDir(job.run_dir).model("reference"))


def reference_token_set(job: JobConfig) -> TokenSet:
    """The token set a reference trained here learns from (a job may define its own 'reference' set)."""
    assert job.reference is not None and job.reference.train is not None
    own = next((t for t in job.tokenize if t.name == "reference"), None)
    return own or TokenSet(name="reference", input="reference", seq_len=job.reference.train.seq_len)


def tokenizer_name(job: JobConfig, token_set: TokenSet) -> str:
    """The tokenizer a token set is made with: its own, else the teacher's (a mix's: its sets')."""
    if token_set.mix:
        return tokenizer_name(job, token_set_named(job, next(iter(token_set.mix))))
    if token_set.tokenizer:
        return token_set.tokenizer
    if job.teacher is None:
        raise ConfigError(f"tokenize.{token_set.name}: no tokenizer given and no teacher to take it from")
    return job.teacher.model


def source_model(job: JobConfig, entry: GenerateConfig | PruneConfig) -> ModelSpec:
    """The model a generate or prune entry uses: the job's teacher, or the model it names."""
    if entry.model == "teacher":
        if job.teacher is None:
            raise ConfigError(f"{entry.name}: the job has no teacher")
        return job.teacher
    return ModelSpec(model=entry.model)


def init_model(job: JobConfig, student: StudentConfig) -> str | None:
    """The folder a student starts from: a prune entry's output, or the folder its `init` names."""
    if student.init is None:
        return None
    if any(p.name == student.init for p in job.prune):
        return str(RunDir(job.run_dir).model(student.init))
    return student.init


def teacher_model(job: JobConfig, name: str) -> tuple[str, str]:
    """The model a `teacher:` key of kd or teacher_logits names, and its dtype: `teacher` is the
    job's teacher (with its dtype); anything else a model in the default dtype."""
    if name != "teacher":
        return name, "auto"
    if job.teacher is None:
        raise ConfigError("the job has no `teacher:` to distill from")
    return job.teacher.model, job.teacher.dtype


def token_set_named(job: JobConfig, name: str, token_sets: list[TokenSet] | None = None) -> TokenSet:
    """The token set of that name (of the job's, or of `token_sets`)."""
    for token_set in token_sets if token_sets is not None else job.tokenize:
        if token_set.name == name:
            return token_set
    raise ConfigError(f"students: no token set {name!r} in the job's tokenize list")

"""The job: every section together, and the checks across sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from miniplm.schema.base import ModelSpec, Strict, expand_home, replica_base, replica_names
from miniplm.schema.corpus import CorpusConfig
from miniplm.schema.eval import EvalConfig, EvalModel
from miniplm.schema.generate import GenerateConfig
from miniplm.schema.prune import PruneConfig
from miniplm.schema.reference import ReferenceSpec
from miniplm.schema.score import ScoreConfig
from miniplm.schema.select import RANDOM_CONTROLS, SelectConfig
from miniplm.schema.slurm import SlurmConfig
from miniplm.schema.students import StudentConfig
from miniplm.schema.teacher_logits import TeacherLogitsSet
from miniplm.schema.tokenize import TokenSet


class JobConfig(Strict):
    run_dir: Path
    seed: int = Field(0, ge=0, lt=2**32, description="every seeded draw of the job (MinHash takes 0 to 2**32 - 1)")
    corpus: CorpusConfig
    teacher: ModelSpec | None = None
    reference: ReferenceSpec | None = None
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    generate: list[GenerateConfig] = Field(default_factory=list)
    prune: list[PruneConfig] = Field(default_factory=list)
    tokenize: list[TokenSet] = Field(default_factory=list)
    teacher_logits: list[TeacherLogitsSet] = Field(default_factory=list)
    students: list[StudentConfig] = Field(default_factory=list)
    eval: EvalConfig | None = None
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @field_validator("run_dir", mode="before")
    @classmethod
    def _run_dir_home(cls, value: Any) -> Any:
        return expand_home(str(value)) if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _token_set_names_unique(self) -> "JobConfig":
        names = [t.name for t in self.tokenize]
        if len(names) != len(set(names)):
            raise ValueError(f"tokenize: names must differ (got {', '.join(names)})")
        if self.eval is not None:
            students = {s.name for s in self.students}
            for m in self.eval.models:
                if isinstance(m, str) and m not in ("students", "reference", "teacher") and m not in students:
                    raise ValueError(f"eval.models: {m!r} is no student of the job; name a student, students, "
                                     "reference, teacher, or give {name: ..., model: PATH}")
        for control in RANDOM_CONTROLS:
            if any(t.input == control.folder for t in self.tokenize) and control not in self.select.random_controls:
                raise ValueError(f"tokenize: input {control.folder} needs select.random_baseline: {control.pool} "
                                 "(or both)")
        pruned = [p.name for p in self.prune]
        models = ["reference", *pruned, *(s.name for s in self.students)]
        if len(models) != len(set(models)):
            raise ValueError(f"prune and students: each writes RUN_DIR/models/NAME, so names must differ from each "
                             f"other and from 'reference' (got {', '.join(models[1:])})")
        self._check_model_names()
        for p in self.prune:
            if p.model == "teacher" and self.teacher is None:
                raise ValueError(f"prune: {p.name!r} prunes the teacher, and the job has no teacher")
        generated = [g.name for g in self.generate]
        if len(generated) != len(set(generated)):
            raise ValueError(f"generate: names must differ (got {', '.join(generated)})")
        for g in self.generate:
            if g.model == "teacher" and self.teacher is None:
                raise ValueError(f"generate: {g.name!r} writes with the teacher, and the job has no teacher")
        sets = {t.name: t for t in self.tokenize}
        for t in self.tokenize:
            for part in t.mix or {}:
                if part not in sets or sets[part].mix is not None:
                    raise ValueError(f"tokenize: {t.name!r} mixes {part!r}, which is no token set of the job made "
                                     f"from documents (token sets: {', '.join(sets)})")
                if sets[part].seq_len != t.seq_len:
                    raise ValueError(f"tokenize: {t.name!r} (seq_len {t.seq_len}) mixes {part!r} (seq_len "
                                     f"{sets[part].seq_len}); give them one seq_len")
            if len({sets[p].tokenizer for p in t.mix or {}}) > 1:
                raise ValueError(f"tokenize: {t.name!r} mixes token sets made with different tokenizers")
            if t.mix is None and t.generated is not None and t.generated not in generated:
                raise ValueError(f"tokenize: {t.name!r} reads {t.input!r}, and the job's generate list has no "
                                 f"{t.generated!r} (generate: {', '.join(generated) or 'none'})")
        self._check_distillation()
        return self

    def _check_model_names(self) -> None:
        """No name of the job stands for two models: a student's seed replicas (NAME.seed1, ...) write
        models/NAME.seed1 and are compared as one row with their student, so a prune entry, another
        student or an evaluated model may not take such a name."""
        seeds = self.eval.seeds if self.eval is not None else 1
        students = {s.name for s in self.students}
        replicas = {r for s in students for r in replica_names(s, seeds)}

        def check(key: str, name: str, *, by_shape: bool = False) -> None:
            base = replica_base(name)
            if name in replicas:
                why = f"eval.seeds: {seeds} trains it again as {', '.join(replica_names(base, seeds))}"
            elif by_shape and base != name and base in students:
                why = "with eval.seeds above 1 its replicas are named so, and the comparison shows them as one row"
            else:
                return
            raise ValueError(f"{key}: {name!r} is a seed replica of student {base!r} by its name ({why}); give it "
                             "another name")

        for i, s in enumerate(self.students):
            check(f"students.{i}.name", s.name, by_shape=True)
        for i, p in enumerate(self.prune):
            check(f"prune.{i}.name", p.name)
        evaluated: set[str] = set()
        for i, m in enumerate(self.eval.models if self.eval is not None else []):
            if not isinstance(m, EvalModel):
                continue
            check(f"eval.models.{i}.name", m.name)
            if m.name in students | {"reference", "teacher"} or m.name in evaluated:
                raise ValueError(f"eval.models.{i}.name: {m.name!r} names a model the job evaluates already "
                                 "(a student, reference, teacher or an earlier entry); give it another name")
            evaluated.add(m.name)

    def _check_distillation(self) -> None:
        sets = {t.name: t for t in self.teacher_logits}
        if len(sets) != len(self.teacher_logits):
            raise ValueError(f"teacher_logits: names must differ (got {', '.join(t.name for t in self.teacher_logits)})")
        token_sets = {t.name for t in self.tokenize}
        for t in self.teacher_logits:
            if t.tokens not in token_sets:
                raise ValueError(f"teacher_logits.{t.name}.tokens: no token set {t.tokens!r} in the job's tokenize list")
            if t.teacher == "teacher" and self.teacher is None:
                raise ValueError(f"teacher_logits.{t.name}: teacher is the job's teacher, and the job has none")
        for s in self.students:
            kd = s.kd
            if kd is None:
                continue
            where = f"students.{s.name}.kd"
            if kd.teacher == "teacher" and kd.source == "online" and self.teacher is None:
                raise ValueError(f"{where}: teacher is the job's teacher, and the job has none")
            if kd.logits is None:
                continue
            if kd.logits not in sets:
                raise ValueError(f"{where}.logits: no teacher_logits set {kd.logits!r} in the job "
                                 f"(sets: {', '.join(sets) or 'none'})")
            stored = sets[kd.logits]
            if stored.tokens != s.tokens:
                raise ValueError(f"{where}.logits: set {kd.logits!r} holds log-probs for token set {stored.tokens!r}, "
                                 f"and the student trains on {s.tokens!r}")
            if stored.temperature != kd.temperature:
                raise ValueError(f"{where}.temperature: {kd.temperature} differs from teacher_logits.{kd.logits}."
                                 f"temperature ({stored.temperature}), the temperature its log-probs were taken at")

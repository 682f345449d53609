"""The job: every section together, and the checks on names that no one section can make.

Checks that concern one stage's entries (their names, what they read, the teacher they need) are in
that stage's `check` (miniplm/stages.py runs them when a job loads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from miniplm.schema.base import ModelSpec, Strict, expand_home, replica_base, replica_names
from miniplm.schema.corpus import CorpusConfig
from miniplm.schema.eval import EvalConfig, EvalModel
from miniplm.schema.export import ExportEntry
from miniplm.schema.generate import GenerateConfig
from miniplm.schema.proxy import ProxyConfig
from miniplm.schema.prune import PruneConfig
from miniplm.schema.reference import ReferenceSpec
from miniplm.schema.score import ScoreConfig
from miniplm.schema.select import SelectConfig
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
    proxy: ProxyConfig | None = None
    select: SelectConfig = Field(default_factory=SelectConfig)
    generate: list[GenerateConfig] = Field(default_factory=list)
    prune: list[PruneConfig] = Field(default_factory=list)
    tokenize: list[TokenSet] = Field(default_factory=list)
    teacher_logits: list[TeacherLogitsSet] = Field(default_factory=list)
    export: list[ExportEntry] = Field(default_factory=list)
    students: list[StudentConfig] = Field(default_factory=list)
    eval: EvalConfig | None = None
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @field_validator("run_dir", mode="before")
    @classmethod
    def _run_dir_home(cls, value: Any) -> Any:
        return expand_home(str(value)) if isinstance(value, (str, Path)) else value

    @property
    def proxy_use(self) -> str | None:
        """How the job uses a proxy: `instead` of scoring every unit, `beside` it, or None (no proxy)."""
        return self.proxy.use if self.proxy is not None else None

    @model_validator(mode="after")
    def _one_model_per_folder(self) -> "JobConfig":
        """Prune entries, students and the reference each write RUN_DIR/models/NAME."""
        pruned = [p.name for p in self.prune]
        models = ["reference", *pruned, *(s.name for s in self.students)]
        if len(models) != len(set(models)):
            raise ValueError(
                f"prune and students: each writes RUN_DIR/models/NAME, so names must differ from each "
                f"other and from 'reference' (got {', '.join(models[1:])})"
            )
        return self

    @model_validator(mode="after")
    def _one_model_per_name(self) -> "JobConfig":
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
            raise ValueError(
                f"{key}: {name!r} is a seed replica of student {base!r} by its name ({why}); give it another name"
            )

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
                raise ValueError(
                    f"eval.models.{i}.name: {m.name!r} names a model the job evaluates already "
                    "(a student, reference, teacher or an earlier entry); give it another name"
                )
            evaluated.add(m.name)
        return self

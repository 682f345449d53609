"""Everything about a job file in one import, for scripts, benchmarks and tests: the schema
(miniplm/schema/), reading and overrides (jobfile.py), the settings' fingerprint
(schema/hashing.py) and what a job's names stand for (lookups.py).

miniplm's own modules import from those modules directly."""

from __future__ import annotations

from miniplm.errors import ConfigError
from miniplm.jobfile import ALTERNATIVES, JobYamlError, apply_overrides, dump_job, job_label, load_yaml, read_job
from miniplm.lookups import (
    expand_input,
    init_model,
    reference_model,
    reference_token_set,
    source_model,
    teacher_model,
    token_set_named,
    tokenizer_name,
)
from miniplm.schema.base import (
    EXECUTION_ONLY,
    KERNELS_HELP,
    NAME_PATTERN,
    REPLICA_SUFFIX,
    Dtype,
    KernelChoice,
    ModelSpec,
    Name,
    plain_name,
    replica_base,
    replica_names,
)
from miniplm.schema.corpus import CorpusConfig, InputFormat, InputSpec, NearDuplicateConfig, QualityConfig, Split
from miniplm.schema.eval import PAPER_TASKS, EvalConfig, EvalModel
from miniplm.schema.generate import GenerateConfig, PromptFile
from miniplm.schema.hashing import config_hash, hashable_dump
from miniplm.schema.job import JobConfig
from miniplm.schema.prune import Calibration, PruneConfig, PruneTarget
from miniplm.schema.reference import ReferenceSpec, ReferenceTraining
from miniplm.schema.score import ScoreConfig
from miniplm.schema.select import RANDOM_CONTROLS, RandomControl, SelectConfig
from miniplm.schema.slurm import SlurmConfig, SlurmResources
from miniplm.schema.students import KDConfig, StudentConfig
from miniplm.schema.teacher_logits import TeacherLogitsSet
from miniplm.schema.tokenize import DOCUMENT_INPUTS, GENERATED, TokenSet

__all__ = [
    "ALTERNATIVES",
    "DOCUMENT_INPUTS",
    "EXECUTION_ONLY",
    "GENERATED",
    "KERNELS_HELP",
    "NAME_PATTERN",
    "PAPER_TASKS",
    "RANDOM_CONTROLS",
    "REPLICA_SUFFIX",
    "Calibration",
    "ConfigError",
    "CorpusConfig",
    "Dtype",
    "EvalConfig",
    "EvalModel",
    "GenerateConfig",
    "InputFormat",
    "InputSpec",
    "JobConfig",
    "JobYamlError",
    "KDConfig",
    "KernelChoice",
    "ModelSpec",
    "Name",
    "NearDuplicateConfig",
    "PromptFile",
    "PruneConfig",
    "PruneTarget",
    "QualityConfig",
    "RandomControl",
    "ReferenceSpec",
    "ReferenceTraining",
    "ScoreConfig",
    "SelectConfig",
    "SlurmConfig",
    "SlurmResources",
    "Split",
    "StudentConfig",
    "TeacherLogitsSet",
    "TokenSet",
    "apply_overrides",
    "config_hash",
    "dump_job",
    "expand_input",
    "hashable_dump",
    "init_model",
    "job_label",
    "load_yaml",
    "plain_name",
    "read_job",
    "reference_model",
    "reference_token_set",
    "replica_base",
    "replica_names",
    "source_model",
    "teacher_model",
    "token_set_named",
    "tokenizer_name",
]

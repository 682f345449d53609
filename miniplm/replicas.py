"""Seed replicas: each student trained with several seeds, so that a comparison shows the spread
between runs of one recipe and a verdict is visible, or its absence is.

With `eval.seeds: N` every student NAME is trained N times: NAME itself with
the job's seed (or the student's own `seed`), and NAME.seed1 ... NAME.seed{N-1}
with the seeds after it. A replica differs from its student only in its name
and seed (the data order and the initialisation); each is a training step of
its own (`train/NAME.seed1`), evaluated on its own, and the comparison shows
the mean and spread of each student's replicas.
"""

from __future__ import annotations

from miniplm.schema.base import replica_base, replica_names
from miniplm.schema.job import JobConfig
from miniplm.schema.students import StudentConfig


def seeds(job: JobConfig) -> int:
    return job.eval.seeds if job.eval is not None else 1


def replicas(job: JobConfig, student: StudentConfig) -> list[StudentConfig]:
    """A student and its seed replicas, in seed order."""
    first = student.seed if student.seed is not None else job.seed
    names = replica_names(student.name, seeds(job))  # the names the job's names were checked against
    return [
        student,
        *(student.model_copy(update={"name": name, "seed": first + k}) for k, name in enumerate(names, start=1)),
    ]


def trained_students(job: JobConfig) -> list[StudentConfig]:
    """Every student the job trains, each followed by its seed replicas."""
    return [r for student in job.students for r in replicas(job, student)]


def base_name(name: str) -> str:
    """The student a replica repeats (a student's own name is its base)."""
    return replica_base(name)


def training_seed(job: JobConfig, student: StudentConfig) -> int:
    return student.seed if student.seed is not None else job.seed

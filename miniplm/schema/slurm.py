"""`slurm:`: how `miniplm slurm` renders and submits the pipeline."""

from __future__ import annotations

from pydantic import Field

from miniplm.schema.base import Strict, replica_base


class SlurmResources(Strict):
    """sbatch settings for a stage; every key is optional and falls back to `slurm.defaults`."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = Field(None, description="time limit, as sbatch takes it: 04:00:00, 2-00:00:00")
    cpus: int | None = Field(None, gt=0, description="CPUs per task")
    mem: str | None = Field(None, description="memory per node, as sbatch takes it: 32G")
    gpus: int | None = Field(None, ge=0, description="array stages: GPUs per task")
    nodes: int | None = Field(None, gt=0, description="training stages: nodes")
    gpus_per_node: int | None = Field(None, ge=0, description="training stages: GPUs per node (one process each)")
    procs_per_node: int | None = Field(None, gt=0, description="training stages without GPUs: processes per node")
    max_tasks: int | None = Field(
        None,
        gt=0,
        description="array stages: at most this many array tasks, each taking "
        "every max_tasks-th shard; also the array size while the shard count is unknown",
    )
    parallel: int | None = Field(None, gt=0, description="array stages: tasks running at once (sbatch --array=...%N)")
    sbatch: list[str] = Field(default_factory=list, description="extra #SBATCH lines, e.g. --constraint=h100")
    setup: list[str] = Field(default_factory=list, description="shell lines run before miniplm (module load, ...)")


class SlurmConfig(Strict):
    """How `miniplm slurm` renders and submits the pipeline."""

    python: str | None = Field(
        None,
        description="the Python that runs miniplm on the nodes; default: the one "
        "running `miniplm slurm` (after setup lines: plain `python` picks up an activated env)",
    )
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines every job runs first (module load, conda activate, source venv/bin/activate)",
    )
    templates: str | None = Field(
        None,
        description="a folder with your own array.sbatch.j2 and ranks.sbatch.j2 "
        "(copy miniplm's slurm/ folder to start)",
    )
    defaults: SlurmResources = Field(default_factory=SlurmResources)
    stages: dict[str, SlurmResources] = Field(
        default_factory=dict,
        description="per stage (prepare, score, ..., train) or per student (train/NAME); "
        "names are checked against the stage registry when the job loads",
    )

    def resources(self, step: str) -> SlurmResources:
        """The settings for a step (`score`, `train/small`): defaults, then the stage's, then the student's."""
        merged = self.defaults.model_dump(exclude_unset=True)
        # a stage, then a student of it (a seed replica takes its student's settings)
        for key in dict.fromkeys((step.split("/")[0], replica_base(step), step)):
            if key in self.stages:
                own = self.stages[key].model_dump(exclude_unset=True)
                merged.update({k: v for k, v in own.items() if k not in ("sbatch", "setup")})
                for k in ("sbatch", "setup"):
                    merged[k] = merged.get(k, []) + own.get(k, [])
        return SlurmResources.model_validate(merged)

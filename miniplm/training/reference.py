"""`miniplm train-reference`: the reference LM trained in the run, on the reference split with the
teacher's tokenizer, into RUN_DIR/models/reference (which score then uses)."""

from __future__ import annotations

from miniplm import outputs
from miniplm.corpus.tokenize import STAGE as TOKENIZE
from miniplm.corpus.tokenize import part_for
from miniplm.errors import ConfigError
from miniplm.inputs import Input
from miniplm.lookups import reference_token_set
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.stage import Part, Stage, Step, run_sharded
from miniplm.training.launch import init_distributed
from miniplm.training.train import train_models, training_progress, training_reads
from miniplm.workers import Worker, resolve_worker

NAME = "train-reference"


class TrainReference(Stage):
    """Tokenize the reference split (every rank takes its share of shards), then train on it."""

    name = NAME
    summary = "train the reference LM on the reference split (reference: {train: ...})"
    description = (
        "Tokenize the reference split with the teacher's tokenizer and train the reference LM with "
        "DeepSpeed into RUN_DIR/models/reference, which score then uses."
    )
    kind = "ranks"
    sections = ("seed",)  # plus the reference's training settings and its token set's hash

    def applies(self, job: JobConfig) -> bool:
        return job.reference is not None and job.reference.train is not None

    def entries(self, job: JobConfig, step: Step) -> list[str]:
        return [self._token_part(job).name, outputs.trained("reference").stage]

    def reads(self, job: JobConfig, part: Part) -> list[Input]:
        """The reference split, tokenized; then what its training reads."""
        assert job.reference is not None and job.reference.train is not None
        return TOKENIZE.reads(job, self._token_part(job)) + training_reads(job, job.reference.train)

    def spends_compute(self, entry: str) -> bool:
        return entry == outputs.trained("reference").stage

    def _token_part(self, job: JobConfig) -> Part:
        return part_for(reference_token_set(job), f"miniplm {NAME}")

    def progress(self, job: JobConfig, rd: RunDir, step: Step) -> str:
        return training_progress(rd, "reference")

    def run(
        self,
        job: JobConfig,
        worker: Worker = Worker(),
        *,
        only: str | None = None,
        force: bool = False,
        show_progress: bool = True,
    ) -> dict:
        from miniplm import distributed

        if job.reference is None or job.reference.train is None:
            raise ConfigError("train-reference: the job gives no `reference: {train: {...}}`")
        init_distributed()
        token_set = reference_token_set(job)
        run_sharded(TOKENIZE, job, self._token_part(job), resolve_worker(), force=force, show_progress=show_progress)
        distributed.barrier()  # every rank's share of the token shards is written
        return train_models(
            job, self, [job.reference.train], [*job.tokenize, token_set], force=force, show_progress=show_progress
        )

    def describe(self, job: JobConfig, result: dict) -> list[str]:
        counts = result["reference"]
        return [
            f"train-reference: {counts['step']} steps, final loss {counts['loss']:.4f}; "
            f"model in {job.run_dir}/models/reference"
        ]


STAGE = TrainReference()

"""A stage with one part per entry of a list in the job: tokenize (token sets), generate (corpora),
prune (models) and teacher-logits (logits sets) are each one of these."""

from __future__ import annotations

from typing import Any

from miniplm.errors import ConfigError
from miniplm.schema.job import JobConfig
from miniplm.stage import Part, ShardedStage, only_one, run_sharded
from miniplm.workers import Worker


class EntryStage(ShardedStage):
    """An array stage with one part per entry of a list in the job (`tokenize/NAME` for each token
    set): `--only NAME` picks one, and each is a step of its own in the plan."""

    section = ""  # the job's list of entries: tokenize, generate, prune, teacher_logits
    only = "entry"  # what an entry is called, in words: token set, generated corpus, ...
    none = ""  # the error for a job whose list is empty

    def entries_of(self, job: JobConfig) -> list[Any]:
        """The job's entries (each has a `name`), in the order their parts run."""
        return getattr(job, self.section)

    def check(self, job: JobConfig) -> None:
        """Names that differ: each is a part, a folder and an `--only`."""
        names = [e.name for e in (getattr(job, self.section) if self.section else self.entries_of(job))]
        if len(names) != len(set(names)):
            raise ConfigError(f"{self.section or self.name}: names must differ (got {', '.join(names)})")

    def part_for(self, entry: Any, command: str | None = None) -> Part:
        return Part(f"{self.name}/{entry.name}", entry, command or f"miniplm {self.name} --only {entry.name}")

    def applies(self, job: JobConfig) -> bool:
        return bool(self.entries_of(job))

    def parts(self, job: JobConfig, only: str | None = None) -> list[Part]:
        entries = self.entries_of(job)
        if not entries:
            raise ConfigError(self.none)
        names = only_one(str(self.only), [e.name for e in entries], only, self.name)
        return [self.part_for(e) for e in entries if e.name in names]

    waiting = "this worker's shards are written; other workers still have shards to write"

    def describe(self, job: JobConfig, result: dict[str, Any]) -> list[str]:
        lines = []
        for key, counts in result.items():
            name = key.removeprefix(f"{self.name}/")
            lines += (
                [f"{self.name} {name}: {self.waiting}"] if counts is None else self.describe_entry(job, name, counts)
            )
        return lines

    def describe_entry(self, job: JobConfig, name: str, counts: dict[str, Any]) -> list[str]:
        """A finished entry's counts, as lines for the terminal."""
        return [f"{self.name} {name}: {counts}"]

    def run(
        self,
        job: JobConfig,
        worker: Worker = Worker(),
        *,
        only: str | None = None,
        force: bool = False,
        show_progress: bool = True,
    ) -> dict[str, Any]:
        """Each part's result by manifest entry (None for one other workers are still writing)."""
        return {
            p.name: run_sharded(self, job, p, worker, force=force, show_progress=show_progress)
            for p in self.parts(job, only)
        }

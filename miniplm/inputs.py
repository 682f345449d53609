"""What a stage reads, as its `inputs` hook names it, turned into content fingerprints.

- `Upstream(stage, folders)`: files an earlier stage of this run wrote. They are checked against
  its record (records.py: each file there, of its size and content, no shard it did not write),
  and the earlier stage must be up to date itself (what it read has not been redone since).
- `Files(label, paths)`: files outside the run (the corpus), by content.
- `Model(label, path)`: a model folder by content (a hub id by its name).
- a plain string: a setting the outputs depend on (a token set's settings), hashed with the job
  sections the stage depends on.

`resolve` gives {label: fingerprint}; the life cycle hashes it into the stage's config hash and
keeps it in the manifest, so a stage that finds its inputs changed can say which did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from miniplm.errors import StageError
from miniplm.fingerprints import combine, fingerprints, model_fingerprint
from miniplm.records import check, recorded_digest, rerun
from miniplm.rundir import SETTINGS, UPSTREAM, RunDir


@dataclass(frozen=True)
class Upstream:
    stage: str  # its manifest entry: prepare, score, tokenize/NAME, ...
    folders: tuple[str, ...] = ()  # relative to the run directory; empty: everything it wrote
    why: str = ""  # what needs it, for the error when it is not done ("student 'a' trains on token set 'b'")

    @property
    def label(self) -> str:
        return f"{self.stage}{UPSTREAM}{','.join(self.folders)}"


@dataclass(frozen=True)
class Files:
    label: str  # corpus.inputs.0
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Model:
    label: str  # teacher, reference, ...
    path: str  # a folder (models/loading.py `resolve_model` gives the bundled model's) or a hub id


Input = Union[Upstream, Files, Model, str]


def resolve(rd: RunDir, reads: list[Input], settings: str, *, reader: str, share: float = 0.0,
            show_progress: bool = False) -> dict[str, str]:
    """{label: fingerprint} of everything the stage `reader` reads, `settings` (the hash of its job
    sections and string inputs) first. `share` (this worker's index over the worker count) is where hashing begins
    in long lists of files, so workers split the work of a cold cache."""
    resolved = {SETTINGS: settings}
    for r in reads:
        if isinstance(r, Upstream):
            resolved[r.label] = _upstream(rd, r, reader, share, show_progress)
        elif isinstance(r, Files):
            found = fingerprints(list(r.paths), start=int(share * len(r.paths)), show_progress=show_progress)
            resolved[r.label] = combine(found.items())
        elif isinstance(r, Model):
            resolved[r.label] = model_fingerprint(r.path, show_progress=show_progress)
    return resolved


def _upstream(rd: RunDir, up: Upstream, reader: str, share: float, show_progress: bool) -> str:
    entry = rd.stage_state(up.stage)
    if entry.get("state") != "done":
        why = up.why or f"{reader} reads what {up.stage} writes"
        raise StageError(f"{rd.root}: {why}; run `{rerun(entry, up.stage)}` first")
    digest = check(rd.root, up.stage, entry, up.folders, share=share, show_progress=show_progress)
    # It must still match what it read: an earlier stage redone since makes it out of date.
    for label in entry.get("inputs", {}):
        if UPSTREAM not in label:
            continue
        source, _, folders = label.partition(UPSTREAM)
        source_entry = rd.stage_state(source)
        current = (recorded_digest(rd.root, source, source_entry, tuple(folders.split(",")) if folders else ())
                   if source_entry.get("state") == "done" else None)
        if current != entry["inputs"][label]:
            raise StageError(f"{rd.root}: {up.stage} is out of date: {source} was redone (or is being redone) "
                             f"after {up.stage} read its output; run `{rerun(entry, up.stage)} --force` first")
    return digest

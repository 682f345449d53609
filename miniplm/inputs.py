"""What a stage reads, as its `reads` hook names it, turned into content fingerprints.

- `Upstream(stage, folders)`: files an earlier stage of this run wrote. They are checked against
  its record (records.py: each file there, of its size and content, no shard it did not write),
  and the earlier stage must be up to date itself: nothing it was made from, however far back (a
  file, a model, a stage before it), changed since (`out_of_date`).
- `Files(label, paths)`: files outside the run (the corpus), by content.
- `Model(label, path)`: a model folder by content (a hub id by its name).
- `Tokenizer(label, path)`: only the tokenizer's files of a model folder, so that new weights with
  the same tokenizer leave what was tokenized with it up to date.
- a plain string: a setting the outputs depend on (a token set's settings), hashed with the job
  sections the stage depends on.

`resolve` gives {label: fingerprint}; the life cycle hashes it into the stage's config hash and
keeps it in the manifest, so a stage that finds its inputs changed can say which did. `sources`
says where the files and models were, kept in the manifest too, so that `out_of_date` can check a
finished stage (and every stage before it) against what its inputs hold now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from miniplm.errors import StageError
from miniplm.fingerprints import combine, fingerprints, model_fingerprint, tokenizer_fingerprint
from miniplm.records import check, recorded_digest, rerun
from miniplm.rundir import SETTINGS, UPSTREAM, RunDir


@dataclass(frozen=True)
class Upstream:
    stage: str  # its manifest entry: prepare, score, tokenize/NAME, ...
    folders: tuple[str, ...] = ()  # relative to the run directory; empty: everything it wrote
    why: str = ""  # what needs it, for the error when it is not done ("student 'a' trains on token set 'b'")
    charged: bool = True  # False: the reader charges what it used of that work itself (the proxy's labels)

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


@dataclass(frozen=True)
class Tokenizer:
    label: str  # tokenizer
    path: str  # a model folder or a hub id, as for Model


Input = Union[Upstream, Files, Model, Tokenizer, str]


def resolve(
    rd: RunDir, reads: list[Input], settings: str, *, reader: str, share: float = 0.0, show_progress: bool = False
) -> dict[str, str]:
    """{label: fingerprint} of everything the stage `reader` reads, `settings` (the hash of its job
    sections and string inputs) first. `share` (this worker's index over the worker count) is where hashing begins
    in long lists of files, so workers split the work of a cold cache."""
    resolved = {SETTINGS: settings}
    for r in reads:
        if isinstance(r, Upstream):
            resolved[r.label] = _upstream(rd, r, reader, share, show_progress)
        elif isinstance(r, (Files, Model, Tokenizer)):
            resolved[r.label] = _content(r, share, show_progress)
    return resolved


def _content(r: Files | Model | Tokenizer, share: float = 0.0, show_progress: bool = False) -> str:
    if isinstance(r, Files):
        found = fingerprints(list(r.paths), start=int(share * len(r.paths)), show_progress=show_progress)
        return combine(found.items())
    if isinstance(r, Tokenizer):
        return tokenizer_fingerprint(r.path)
    return model_fingerprint(r.path, show_progress=show_progress)


def sources(reads: list[Input]) -> dict[str, list[Any]]:
    """Where each file and model input is, by label ([kind, paths or path]): what `out_of_date`
    fingerprints again."""
    found: dict[str, list[Any]] = {}
    for r in reads:
        if isinstance(r, Files):
            found[r.label] = ["files", list(r.paths)]
        elif isinstance(r, Model):
            found[r.label] = ["model", r.path]
        elif isinstance(r, Tokenizer):
            found[r.label] = ["tokenizer", r.path]
    return found


def _source(label: str, source: Any) -> Files | Model | Tokenizer | None:
    """The input a manifest's `sources` entry describes; None for one it cannot describe."""
    if not (isinstance(source, list) and len(source) == 2):
        return None
    kind, where = source
    if kind == "files" and isinstance(where, list):
        return Files(label, tuple(str(p) for p in where))
    if kind in ("model", "tokenizer") and isinstance(where, str):
        return (Model if kind == "model" else Tokenizer)(label, where)
    return None


def out_of_date(
    rd: RunDir, stage: str, entry: dict[str, Any] | None = None, known: dict[str, tuple[str, str] | None] | None = None
) -> tuple[str, str] | None:
    """Why a finished stage is out of date, as (the stage to redo first, what changed): a file or
    model it read changed since, or an earlier stage it read was redone since, or is out of date
    itself, however far back. None when everything it was made from is as it was. Files and models
    are fingerprinted again (a `stat` each, once cached); earlier stages by their records. `known`
    remembers the stages already looked at, so that each is looked at once."""
    known = {} if known is None else known
    if stage in known:
        return known[stage]
    known[stage] = None  # a cycle, which the pipeline cannot make, ends here
    entry = rd.stage_state(stage) if entry is None else entry
    recorded = entry.get("inputs", {})
    found = None
    for label, value in recorded.items():
        if UPSTREAM in label:
            source, _, folders = label.partition(UPSTREAM)
            source_entry = rd.stage_state(source)
            current = (
                recorded_digest(rd.root, source, source_entry, tuple(folders.split(",")) if folders else ())
                if source_entry.get("state") == "done"
                else None
            )
            if current != value:
                found = (stage, f"{source} was redone (or is being redone) after {stage} read its output")
            else:
                found = out_of_date(rd, source, source_entry, known)
        elif (r := _source(label, entry.get("sources", {}).get(label))) is not None and _content(r) != value:
            found = (stage, f"{label} changed since {stage} read it")
        if found is not None:
            break
    known[stage] = found
    return found


def _upstream(rd: RunDir, up: Upstream, reader: str, share: float, show_progress: bool) -> str:
    entry = rd.stage_state(up.stage)
    if entry.get("state") != "done":
        why = up.why or f"{reader} reads what {up.stage} writes"
        raise StageError(f"{rd.root}: {why}; run `{rerun(entry, up.stage)}` first")
    digest = check(rd.root, up.stage, entry, up.folders, share=share, show_progress=show_progress)
    # It must still match what it was made from: an input changed or an earlier stage redone since,
    # however far back, makes it out of date.
    stale = out_of_date(rd, up.stage, entry)
    if stale is not None:
        first, why = stale
        also = "" if first == up.stage else f", then `{rerun(entry, up.stage)} --force`"
        raise StageError(
            f"{rd.root}: {up.stage} is out of date: {why}; run "
            f"`{rerun(rd.stage_state(first), first)} --force` first{also}"
        )
    return digest

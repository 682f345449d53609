"""What each stage wrote: RUN_DIR/records/STAGE.json lists every file under the stage's outputs with
its size and content hash, written when the stage finishes.

- Later stages check the files they read against it (`check`): a missing, truncated or changed
  shard, or a shard the stage never wrote, is an error naming the file and the command that redoes
  the stage. The digest of what they read goes into their config hash, so an earlier stage redone
  with other content makes the stages after it out of date instead of done.
- `--force` deletes only what a stage wrote (`delete_written`): the files its record lists, or, for
  a stage that never finished, the files that appeared under its outputs after it started. Files
  that were there before (`snapshot`) and are unchanged stay.

Paths in records are relative to the run directory, with `/` between parts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from miniplm.errors import StageError
from miniplm.files import atomic_write_json
from miniplm.fingerprints import combine, fingerprint, fingerprints, identity, settled
from miniplm.paths import below

SHARD_PREFIX = "shard-"


def record_file(root: Path, stage: str) -> Path:
    return below(root / "records", stage, ".json", parts=2)


def _cache(root: Path) -> Path:
    """Where the fingerprints of the run's own files are remembered: inside it."""
    return root / "records" / ".fingerprints"


def rerun(entry: dict[str, Any], stage: str) -> str:
    """The command that redoes a stage, as its manifest entry says."""
    return entry.get("command") or f"miniplm {stage.split('/')[0]}"


def _files_under(root: Path, outputs: Iterable[str]) -> list[str]:
    found = []
    for out in outputs:
        top = root / out
        if top.is_file():
            found.append(out)
        for folder, _, files in os.walk(top):
            rel = Path(folder).relative_to(root).as_posix()
            found += [f"{rel}/{name}" for name in files]
    return sorted(set(found))


def snapshot(root: Path, outputs: list[str]) -> dict[str, list[int]]:
    """The files already under a stage's outputs when it starts (not its own), by identity."""
    return {rel: ident for rel in _files_under(root, outputs) if (ident := identity(root / rel)) is not None}


def written(root: Path, outputs: list[str], preexisting: dict[str, list[int]]) -> list[str]:
    """Files under the outputs that the stage wrote: all but those there before it and unchanged."""
    return [rel for rel in _files_under(root, outputs) if preexisting.get(rel) != identity(root / rel)]


def write(
    root: Path, stage: str, outputs: list[str], preexisting: dict[str, list[int]], *, show_progress: bool = False
) -> dict[str, Any]:
    """Hash what the stage wrote into its record; the summary the manifest keeps. Each file's
    identity is kept too (when settled), so that checking an unchanged file is a `stat`."""
    files = written(root, outputs, preexisting)
    before = {rel: identity(root / rel) for rel in files}
    hashes = fingerprints([str(root / rel) for rel in files], show_progress=show_progress, cache=_cache(root))
    listed = {}
    for rel in files:
        ident = identity(root / rel)
        if ident is None:
            raise StageError(f"{root / rel}: gone while {stage} was being recorded")
        listed[rel] = {"bytes": ident[0], "xxh3_128": hashes[str(root / rel)]}
        if ident == before[rel] and settled(ident):
            listed[rel]["stat"] = ident
    atomic_write_json(record_file(root, stage), {"stage": stage, "files": listed})
    return {"files": len(listed), "digest": _digest(listed)}


def _digest(listed: dict[str, dict]) -> str:
    return combine((rel, f"{f['bytes']}:{f['xxh3_128']}") for rel, f in sorted(listed.items()))


def read(root: Path, stage: str, entry: dict[str, Any]) -> dict[str, dict]:
    """The files a finished stage's record lists; StageError when it is missing or damaged."""
    path = record_file(root, stage)
    try:
        listed = json.loads(path.read_text())["files"]
        if not all(isinstance(f, dict) and {"bytes", "xxh3_128"} <= f.keys() for f in listed.values()):
            raise TypeError
        return listed
    except FileNotFoundError:
        problem = "is missing"
    except (ValueError, KeyError, TypeError, AttributeError):
        problem = "is damaged"
    raise StageError(
        f"{path}: the record of what {stage} wrote {problem}, so its outputs cannot be checked; "
        f"run `{rerun(entry, stage)} --force` to redo {stage}"
    )


def _within(rel: str, folders: tuple[str, ...]) -> bool:
    return not folders or any(rel == f or rel.startswith(f + "/") for f in folders)


def recorded_digest(root: Path, stage: str, entry: dict[str, Any], folders: tuple[str, ...] = ()) -> str:
    """The digest of what a finished stage's record lists under `folders`, without reading the files."""
    return _digest({rel: f for rel, f in read(root, stage, entry).items() if _within(rel, folders)})


def check(
    root: Path,
    stage: str,
    entry: dict[str, Any],
    folders: tuple[str, ...] = (),
    *,
    share: float = 0.0,
    show_progress: bool = False,
) -> str:
    """Check the files a finished stage wrote under `folders` (all, when empty) against its record:
    each there, of the recorded size and content, and no shard in those folders that it did not
    write. Their digest; StageError naming the first bad file otherwise. `share` is where hashing
    begins (see fingerprints.fingerprints)."""
    listed = {rel: f for rel, f in read(root, stage, entry).items() if _within(rel, folders)}
    redo = f"run `{rerun(entry, stage)} --force` to redo {stage}"
    unsure = []  # files that may have changed since they were recorded: their content decides
    for rel, f in listed.items():
        ident = identity(root / rel)
        if ident is None:
            raise StageError(f"{root / rel}: missing ({stage} wrote it); {redo}")
        if ident[0] != f["bytes"]:
            raise StageError(f"{root / rel}: damaged: {ident[0]:,} bytes where {stage} wrote {f['bytes']:,}; {redo}")
        if f.get("stat") != ident:
            unsure.append(rel)
    for folder in folders or sorted({rel.rpartition("/")[0] for rel in listed}):
        if (root / folder).is_dir():
            for name in sorted(os.listdir(root / folder)):
                if name.startswith(SHARD_PREFIX) and f"{folder}/{name}" not in listed:
                    raise StageError(
                        f"{root / folder / name}: not written by {stage} in this run (its record lists "
                        f"{sum(1 for r in listed if r.startswith(folder + '/'))} files in {folder}/); "
                        f"move it away, or {redo}"
                    )
    paths = [str(root / rel) for rel in unsure]
    hashes = fingerprints(paths, start=int(share * len(paths)), show_progress=show_progress, cache=_cache(root))
    for rel in unsure:
        if hashes[str(root / rel)] != listed[rel]["xxh3_128"]:
            raise StageError(f"{root / rel}: its content changed since {stage} wrote it; {redo}")
    return _digest(listed)


def problems(root: Path, stage: str, entry: dict[str, Any]) -> list[str]:
    """What is wrong with a finished stage's outputs: files gone, of another size, or of other content.
    A file is read only when its identity is neither the one recorded nor one whose hash is cached:
    an unchanged run costs a `stat` per file."""
    try:
        listed = read(root, stage, entry)
    except StageError as e:
        return [str(e)]
    found = []
    for rel, f in listed.items():
        ident = identity(root / rel)
        if ident is None:
            found.append(f"{root / rel}: missing")
        elif ident[0] != f["bytes"]:
            found.append(f"{root / rel}: {ident[0]:,} bytes where {stage} wrote {f['bytes']:,}")
        elif f.get("stat") != ident and fingerprint(root / rel, cache=_cache(root)) != f["xxh3_128"]:
            found.append(f"{root / rel}: its content changed since {stage} wrote it")
    return found


def delete_written(root: Path, stage: str, entry: dict[str, Any], outputs: list[str]) -> None:
    """Delete what the stage wrote (see the module's docstring), then the folders it left empty."""
    if not entry:
        return  # the manifest does not know the stage: nothing here is known to be its
    # The manifest and the record are files anyone sharing the run directory can edit: what they list
    # is deleted only inside the stage's own output folders (`outputs`, from the job), links resolved.
    listed = entry.get("outputs", outputs)
    if not isinstance(listed, list):
        raise StageError(f"{root / 'manifest.json'}: the outputs of {stage} are not a list; nothing was deleted")
    own = [_own(root, stage, out, outputs, "manifest.json", folder=True) for out in listed]
    mine = [p.relative_to(root).as_posix() for p in own]
    try:
        files = list(read(root, stage, entry)) if entry.get("state") == "done" else None
    except StageError:
        files = None  # a damaged record: fall back on what changed since the stage started
    where = record_file(root, stage).relative_to(root).as_posix()
    if files is None:
        files, where = written(root, mine, entry.get("preexisting", {})), "manifest.json"
    doomed = [_own(root, stage, rel, mine, where) for rel in files]  # every one checked before any goes
    for path in doomed:
        path.unlink(missing_ok=True)
    for out in own:
        if out.is_dir():
            _remove_empty_folders(out)
    record_file(root, stage).unlink(missing_ok=True)


def _own(root: Path, stage: str, rel: Any, folders: list[str], where: str, *, folder: bool = False) -> Path:
    """`root/rel`, when it lies in one of `folders` (the stage's outputs) both as written and with
    every link resolved (`folder`: the last part too; a file's own link is deleted, not followed);
    StageError naming `where` (the file that listed it) otherwise."""
    parts = rel.split("/") if isinstance(rel, str) else [""]
    inside = next((f for f in folders if rel == f or str(rel).startswith(f + "/")), None)
    if inside is not None and not any(p in ("", ".", "..") for p in parts):
        path = root / rel
        real = Path(os.path.realpath(path if folder else path.parent))
        if real.is_relative_to(Path(os.path.realpath(root)) / inside):
            return path
    raise StageError(
        f"{root / str(rel)}: {root / where} lists it among what {stage} wrote, and it lies outside "
        f"{stage}'s own folders ({', '.join(folders) or 'none'}); nothing was deleted. Put back a "
        f"copy of {where}, or remove that entry from it"
    )


def _remove_empty_folders(top: Path) -> None:
    for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(folder)
        except OSError:
            pass  # not empty: something that is not the stage's lives there

"""Finding files: folder walks and `**` globs that follow symbolic links to folders, but visit each
real folder once, so a link that points back up the tree (a loop) ends the walk instead of
repeating it until the path is too long.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterator

from miniplm.errors import ConfigError


def below(folder: Path, relative: str, suffix: str = "", *, parts: int = 1) -> Path:
    """`folder/relative` (+ `suffix`), where `relative` is at most `parts` plain names joined by `/`.

    ConfigError for anything that would resolve to `folder` itself or outside it (`.`, `..`, an
    empty part, an absolute path, a separator inside a name): a path built from a name in a job
    must never reach beyond its folder, since a stage deletes and replaces what it writes there.
    """
    names = relative.split("/")
    if len(names) > parts or any(n in ("", ".", "..") or os.sep in n or (os.altsep or "/") in n for n in names):
        raise ConfigError(
            f"{relative!r} is not a name a path under {folder} can be built from "
            f"(one plain folder name{'' if parts == 1 else ' or ' + str(parts) + ' joined by /'})"
        )
    return folder.joinpath(*names[:-1], names[-1] + suffix)


def _folder_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def walk_folders(top: str, *, hidden: bool = True) -> Iterator[str]:
    """`top` and every folder below it, following links, each real folder once (top-down, sorted;
    a folder reached both directly and through a link beside it is walked under its own name)."""
    seen = {_folder_key(top)}
    for root, dirs, _ in os.walk(top, followlinks=True):
        yield root
        keep = []
        for name in sorted(dirs, key=lambda d: os.path.islink(os.path.join(root, d))):
            key = _folder_key(os.path.join(root, name))
            if key is not None and key not in seen and (hidden or not name.startswith(".")):
                seen.add(key)
                keep.append(name)
        dirs[:] = sorted(keep)


def walk_files(top: str) -> list[str]:
    """Every regular file under `top` (hidden ones too), sorted; a linked folder is walked once."""
    files: list[str] = []
    for folder in walk_folders(top):
        with os.scandir(folder) as entries:
            files += [os.path.join(folder, e.name) for e in entries if e.is_file()]
    return sorted(files)


def glob_paths(pattern: str) -> list[str]:
    """What `glob.glob(pattern, recursive=True)` matches, sorted, but a `**` part walks each real
    folder once (glob itself follows a link loop until the path is too long for the system)."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return sorted(glob.glob(pattern))
    cut = parts.index("**")
    head, rest = os.sep.join(parts[:cut]), os.sep.join(parts[cut + 1 :])
    if not head and pattern.startswith(os.sep):
        head = os.sep
    bases = sorted(glob.glob(head)) if glob.has_magic(head) else [head]
    found: list[str] = []
    for base in bases:
        if not os.path.isdir(base or os.curdir):
            continue
        # like glob, `**` matches no folder or any number of them, never hidden ones
        for folder in walk_folders(base or os.curdir, hidden=False):
            if not base:  # a relative pattern: paths as glob gives them, without a leading ./
                folder = "" if folder == os.curdir else os.path.relpath(folder)
            if rest:
                found += glob_paths(os.path.join(glob.escape(folder), rest))
                continue
            # a trailing `**`: the folders themselves (the first as `base/`) and the files in them
            if folder:
                found.append(os.path.join(folder, "") if folder == base else folder)
            found += [
                os.path.join(folder, n)
                for n in os.listdir(folder or os.curdir)
                if not n.startswith(".") and not os.path.isdir(os.path.join(folder or os.curdir, n))
            ]
    return sorted(dict.fromkeys(found))

#!/usr/bin/env python3
"""Real text that is already on a machine: the Python sources and documentation of its installed
packages, split by package into disjoint parts for benchmarks/gpu/evidence.sh.

    python benchmarks/gpu/evidence_corpus.py OUT [--max-mb 400] [--shares 0.45 0.1 0.35 0.1]

Each file under the interpreter's site-packages (and its standard library) that is Python source,
reStructuredText, Markdown or plain text becomes one document, its source the top-level package it
belongs to; binary files, files that do not decode as UTF-8, and files over 200,000 characters are
left out. Packages go whole to one part: teacher, reference, pool (what MiniPLM selects from) and
held-out, in the shares given (of characters), assigned largest first to the part furthest below
its share, so that the held-out packages are code and prose the teacher, the reference and the
students never saw. Writes OUT/{part}.jsonl (id, text, source) and OUT/parts.json (packages,
documents and characters per part).
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from collections import defaultdict
from pathlib import Path

PARTS = ("teacher", "reference", "pool", "heldout")
SUFFIXES = {".py", ".rst", ".md", ".txt", ".pyi"}
MAX_CHARS = 200_000


def roots() -> list[Path]:
    """Where the interpreter's packages live: site-packages (and any on sys.path), the standard library."""
    found = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib", "stdlib")}
    found |= {Path(p) for p in sys.path if p.endswith("site-packages")}
    return sorted(p for p in found if p.is_dir())


def documents(root: Path, stdlib: bool):
    """(package, relative path, text) of each text file under root."""
    for path in sorted(root.rglob("*")):
        if path.suffix not in SUFFIXES or not path.is_file() or "site-packages" in path.relative_to(root).parts[:-1]:
            continue
        relative = path.relative_to(root)
        if stdlib and relative.parts[0] in ("site-packages", "dist-packages"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip() or len(text) > MAX_CHARS:
            continue
        top = relative.parts[0].split(".")[0].split("-")[0] if len(relative.parts) > 1 else relative.stem
        package = f"stdlib/{top}" if stdlib else top
        yield package, str(relative), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-mb", type=float, default=400, help="stop reading after this many MB of text")
    parser.add_argument("--shares", type=float, nargs=4, default=[0.45, 0.1, 0.35, 0.1], metavar=PARTS)
    args = parser.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    by_package: dict[str, list[tuple[str, str]]] = defaultdict(list)
    total = 0
    for root in roots():
        for package, relative, text in documents(root, root == stdlib):
            by_package[package].append((relative, text))
            total += len(text)
            if total > args.max_mb * 1e6:
                break
        if total > args.max_mb * 1e6:
            break
    sizes = {p: sum(len(t) for _, t in docs) for p, docs in by_package.items()}
    shares = dict(zip(PARTS, args.shares))
    filled = dict.fromkeys(PARTS, 0)
    part_of = {}
    for package in sorted(sizes, key=lambda p: (-sizes[p], p)):  # largest first: the shares come out close
        part = min(PARTS, key=lambda q: (filled[q] / (shares[q] * total), PARTS.index(q)))
        part_of[package], filled[part] = part, filled[part] + sizes[package]
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {part: {"packages": 0, "documents": 0, "characters": 0} for part in PARTS}
    files = {part: (args.out / f"{part}.jsonl").open("w") for part in PARTS}
    for package in sorted(by_package):
        part = part_of[package]
        summary[part]["packages"] += 1
        for relative, text in by_package[package]:
            record = {"id": f"{package}:{relative}", "text": text, "source": package}
            files[part].write(json.dumps(record) + "\n")
            summary[part]["documents"] += 1
            summary[part]["characters"] += len(text)
    for f in files.values():
        f.close()
    (args.out / "parts.json").write_text(json.dumps(summary, indent=1) + "\n")
    for part, counts in summary.items():
        print(f"{part:<10} {counts['packages']:>5} packages {counts['documents']:>7} documents "
              f"{counts['characters'] / 1e6:>8.1f}M characters")  # fmt: skip


if __name__ == "__main__":
    main()

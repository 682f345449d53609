#!/usr/bin/env python3
"""Build the bundled sample corpus in data/sample/ from Debian packages.

    python data/build_sample.py            # needs apt-get download (any Debian 12)

Sources (see data/README.md for licences):
- bible-kjv-text + bible-kjv: the King James Bible, one document per chapter,
  extracted with the package's own `bible` program;
- python3.11-doc: the reST sources of the Python 3.11 documentation, one
  document per file;
- noise.parquet: deterministic noise documents (seeded), the text a
  pretraining filter should drop: gibberish characters, repeated boilerplate
  and OCR-like garbage.

Every file has the columns id, text, source, title and is written as
zstd-compressed Parquet; the build is deterministic for the same packages.
"""

from __future__ import annotations

import argparse
import random
import re
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PACKAGES = ["bible-kjv-text", "bible-kjv", "python3.11-doc"]

BOOKS = [
    "Genesis",
    "Exodus",
    "Leviticus",
    "Numbers",
    "Deuteronomy",
    "Joshua",
    "Judges",
    "Ruth",
    "1 Samuel",
    "2 Samuel",
    "1 Kings",
    "2 Kings",
    "1 Chronicles",
    "2 Chronicles",
    "Ezra",
    "Nehemiah",
    "Esther",
    "Job",
    "Psalms",
    "Proverbs",
    "Ecclesiastes",
    "Song of Solomon",
    "Isaiah",
    "Jeremiah",
    "Lamentations",
    "Ezekiel",
    "Daniel",
    "Hosea",
    "Joel",
    "Amos",
    "Obadiah",
    "Jonah",
    "Micah",
    "Nahum",
    "Habakkuk",
    "Zephaniah",
    "Haggai",
    "Zechariah",
    "Malachi",
    "Matthew",
    "Mark",
    "Luke",
    "John",
    "Acts",
    "Romans",
    "1 Corinthians",
    "2 Corinthians",
    "Galatians",
    "Ephesians",
    "Philippians",
    "Colossians",
    "1 Thessalonians",
    "2 Thessalonians",
    "1 Timothy",
    "2 Timothy",
    "Titus",
    "Philemon",
    "Hebrews",
    "James",
    "1 Peter",
    "2 Peter",
    "1 John",
    "2 John",
    "3 John",
    "Jude",
    "Revelation",
]

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("title", pa.string())])


def unpack_packages(dest: Path) -> Path:
    debs = dest / "debs"
    debs.mkdir()
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
    root = dest / "root"
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def _chapter(bible: Path, data_dir: Path, book: str, chapter: int) -> tuple[str, str] | None:
    """('Genesis 1', text) or None past the book's last chapter (`bible` then repeats the last one)."""
    # `bible` reads "1 Samuel 1" as a verse of Genesis and "Song of Solomon 2" as
    # chapter 1: it wants the spaces out ("1Samuel 1", "SongofSolomon 2").
    spec = book.replace(" ", "")
    out = subprocess.run(
        [str(bible), "-p", str(data_dir), "-l", "10000", f"{spec} {chapter}:1-200"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line.rstrip() for line in out.splitlines() if line.strip()]
    heading = lines[0].strip()
    if heading != f"{book} {chapter}":
        return None
    verses = []
    for line in lines[1:]:
        m = re.match(r"\s*(\d+)\s+(.*)", line)
        if m:
            verses.append(f"{m.group(1)} {m.group(2)}")
        else:  # a wrapped verse continues
            verses[-1] += " " + line.strip()
    return heading, heading + "\n\n" + "\n".join(verses) + "\n"


def kjv_rows(root: Path) -> list[dict]:
    bible, data_dir = root / "usr/bin/bible", root / "usr/lib"
    rows = []
    for book in BOOKS:
        chapter = 1
        while (found := _chapter(bible, data_dir, book, chapter)) is not None:
            heading, text = found
            rows.append(dict(id=f"kjv/{book.replace(' ', '_')}/{chapter}", text=text, source="kjv", title=heading))
            chapter += 1
    if len(rows) != 1189:
        sys.exit(f"expected 1,189 chapters of the KJV, extracted {len(rows)}")
    return rows


def python_doc_rows(root: Path) -> list[dict]:
    sources = root / "usr/share/doc/python3.11/html/_sources"
    rows = []
    for path in sorted(sources.rglob("*.rst.txt")):
        rel = path.relative_to(sources).as_posix().removesuffix(".rst.txt")
        rows.append(
            dict(id=f"python-docs/{rel}", text=path.read_text(encoding="utf-8"), source="python-docs", title=rel)
        )
    return rows


BOILERPLATE = [
    "Click here to subscribe to our newsletter! ",
    "All rights reserved. Terms of use | Privacy policy | Cookie settings. ",
    "Add to cart - Free shipping on orders over $50 - Limited time offer! ",
    "Home > Products > Category > Page {n} of {m} | Next >> ",
    "Share on Facebook | Tweet | Pin it | Email this page. ",
]


def noise_rows(seed: int, per_kind: int) -> list[dict]:
    """Text a pretraining corpus should not keep, labelled by kind in `source`."""
    rng = random.Random(seed)
    rows = []
    alphabet = string.ascii_letters + string.digits + string.punctuation + " " * 12
    for i in range(per_kind):
        n = rng.randint(300, 4000)
        text = "".join(rng.choice(alphabet) for _ in range(n))
        rows.append(dict(id=f"noise/gibberish/{i:04d}", text=text, source="noise-gibberish", title="gibberish"))
    for i in range(per_kind):
        parts = [
            rng.choice(BOILERPLATE).format(n=rng.randint(1, 9), m=rng.randint(10, 99))
            for _ in range(rng.randint(5, 60))
        ]
        if i % 6 == 5:  # the same legal footer page, crawled again and again
            parts = [BOILERPLATE[1]] * 8
        rows.append(
            dict(
                id=f"noise/boilerplate/{i:04d}",
                text="".join(parts).strip() + "\n",
                source="noise-boilerplate",
                title="boilerplate",
            )
        )
    confusions = {"e": "c", "l": "1", "o": "0", "m": "rn", "h": "b", "i": "!", "s": "5", "a": "o", " ": ""}
    prose_words = (
        "the of and to in that it was for on with as his they at be this from have or by one had "
        "not but what all were when we there can an your which their said if do will each about how "
        "up out them then she many some so these would other into has more her two like him see"
    ).split()
    for i in range(per_kind):
        words = [rng.choice(prose_words) for _ in range(rng.randint(80, 700))]
        chars = []
        for ch in " ".join(words):
            r = rng.random()
            if r < 0.18 and ch in confusions:
                chars.append(confusions[ch])
            elif r < 0.22:
                chars.append(rng.choice("~^|`#@%&*"))
            elif r < 0.24:
                chars.append("\n")
            else:
                chars.append(ch)
        rows.append(dict(id=f"noise/ocr/{i:04d}", text="".join(chars) + "\n", source="noise-ocr", title="ocr garbage"))
    return rows


def write(rows: list[dict], path: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, path, compression="zstd", compression_level=19, row_group_size=500)
    print(
        f"{path}: {len(rows)} documents, {sum(len(r['text']) for r in rows):,} characters, "
        f"{path.stat().st_size:,} bytes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "sample")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--noise-per-kind", type=int, default=60)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_packages(Path(tmp))
        write(kjv_rows(root), args.out / "kjv.parquet")
        write(python_doc_rows(root), args.out / "python-docs.parquet")
    write(noise_rows(args.seed, args.noise_per_kind), args.out / "noise.parquet")


if __name__ == "__main__":
    main()

"""Build data/eval/clean-heldout.jsonl: clean held-out text from the bundled corpus.

Whole documents of the King James Bible and the Python documentation that
the demo never trains on: the demo reads the first 160 documents of each
file, and data/build_eval_task.py takes its cloze items from document 400
on, so these come from documents 160 to 399, evenly spaced. No noise: a
student is judged on text worth modelling, not rewarded for having seen the
noise. Deterministic: the same corpus gives the same file.

    python data/build_heldout.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
FIRST, END = 160, 400  # past the demo's limit, before the cloze task's documents
PICKS = {"kjv": 16, "python-docs": 8}  # documents per source, evenly spaced
MAX_CHARS = 12_000  # the documentation has a few very long pages; keep the sources about even


def pick(rows: list[dict], n: int) -> list[dict]:
    candidates = [r for r in rows[FIRST:END] if len(r["text"]) <= MAX_CHARS]
    step = len(candidates) / n
    return [candidates[int(k * step)] for k in range(n)]


def main() -> None:
    out = HERE / "eval" / "clean-heldout.jsonl"
    rows = []
    for source, n in PICKS.items():
        table = pq.read_table(HERE / "sample" / f"{source}.parquet", columns=["id", "text", "source"]).to_pylist()
        rows += pick(table, n)
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{out}: {len(rows)} documents, {sum(len(r['text']) for r in rows):,} characters")


if __name__ == "__main__":
    main()

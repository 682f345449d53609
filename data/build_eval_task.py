"""Build data/eval/bundled-cloze.jsonl: an offline multiple-choice task from the bundled corpus.

Each item is the first half of a sentence (a KJV verse, or a sentence of the
Python documentation's prose) and four endings: its own and the endings of
three other sentences of the same source. A model that knows the text better
puts more probability on the true ending. Items come from documents the demo
job does not read (it takes the first 160 of each file), so the demo's
students never trained on them. Deterministic: the same corpus gives the same
file.

    python data/build_eval_task.py
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
SKIP_DOCS = 400  # far past the demo's limit of 160 documents per file
PER_SOURCE = 100


def kjv_sentences(texts: list[str]) -> list[str]:
    verses = []
    for text in texts:
        for line in text.splitlines():
            m = re.match(r"^\d+ (.+)$", line)
            if m and 12 <= len(m.group(1).split()) <= 40:
                verses.append(m.group(1))
    return verses


def prose_sentences(texts: list[str]) -> list[str]:
    sentences = []
    for text in texts:
        for block in text.split("\n\n"):
            if block.startswith((" ", ".", ":", "=", "-", "*", ">")) or "`" in block or "::" in block:
                continue  # markup, code, lists: keep plain prose
            for sentence in re.split(r"(?<=\.)\s+", " ".join(block.split())):
                if 10 <= len(sentence.split()) <= 35 and sentence.endswith("."):
                    sentences.append(sentence)
    return sentences


def items(sentences: list[str], source: str, rng: random.Random) -> list[dict]:
    chosen = rng.sample(sentences, min(PER_SOURCE, len(sentences)))
    halves = [(" ".join(s.split()[: len(s.split()) // 2]), " ".join(s.split()[len(s.split()) // 2 :])) for s in chosen]
    out = []
    for i, (context, ending) in enumerate(halves):
        others = rng.sample([h[1] for j, h in enumerate(halves) if j != i and h[1] != ending], 3)
        choices = [ending, *others]
        rng.shuffle(choices)
        out.append({"source": source, "context": context, "choices": choices, "label": choices.index(ending)})
    return out


def main() -> None:
    rng = random.Random(0)
    kjv = pq.read_table(HERE / "sample" / "kjv.parquet", columns=["text"])["text"].to_pylist()[SKIP_DOCS:]
    docs = pq.read_table(HERE / "sample" / "python-docs.parquet", columns=["text"])["text"].to_pylist()[SKIP_DOCS:]
    rows = items(kjv_sentences(kjv), "kjv", rng) + items(prose_sentences(docs), "python-docs", rng)
    out = HERE / "eval" / "bundled-cloze.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{out}: {len(rows)} items")


if __name__ == "__main__":
    main()

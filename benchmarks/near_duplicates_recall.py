#!/usr/bin/env python3
"""Recall and false positives of prepare's near-duplicate bands, for LSH shapes side by side.

    python benchmarks/near_duplicates_recall.py [--copies 300]

Planted near-copies: real documents of the bundled corpus (King James chapters and Python
documentation pages of 300 words or more), each copied with one word in k replaced, k chosen for a
target Jaccard similarity of the word 5-gram sets (measured exactly, per pair). A copy is found when
it shares a band with its original, which is what prepare's decision links. False positives: pairs
of different original documents that share a band, counted with their own Jaccard similarity (a pair
below 0.5 is a false positive; the bundled corpus has real near-copies of its own, which are not).
Also printed: the bytes per document each shape costs in the part files and in the global step.
"""

from __future__ import annotations

import argparse
import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl

from miniplm.config import NearDuplicateConfig
from miniplm.corpus.documents import normalise
from miniplm.corpus.near_duplicates import Bands, shape

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
TARGETS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
SHAPES = {
    "tuned for 0.8, 128 perms (before)": NearDuplicateConfig(threshold=0.8, num_perm=128),
    "FineWeb 14 x 8, 112 perms (default)": NearDuplicateConfig(),
}


def shingles(text: str, n: int = 5) -> set[str]:
    words = text.split(" ")
    return {" ".join(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def edited(text: str, target: float, rng: np.random.Generator) -> str:
    """The text with one word in every `k` replaced, k such that the 5-gram sets' Jaccard similarity
    is about `target` (each replaced word changes up to five shingles)."""
    every = max(1, round(5 * (1 + target) / (1 - target)))
    words = text.split(" ")
    for i in range(int(rng.integers(0, every)), len(words), every):
        words[i] = f"edited{i}"
    return " ".join(words)


def documents(min_words: int) -> list[str]:
    """The bundled corpus's documents of `min_words` words or more, normalised as prepare does."""
    texts = pl.concat([pl.read_parquet(p).select("text") for p in sorted(SAMPLE.glob("*.parquet"))])["text"]
    normalised = [normalise(t) for t in texts.to_list()]
    return [t for t in normalised if len(t.split(" ")) >= min_words]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=300, help="planted copies per target similarity")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    corpus = documents(30)
    long = documents(300)
    originals = [long[i] for i in sorted(rng.choice(len(long), min(args.copies, len(long)), replace=False))]
    planted = {t: [(o, edited(o, t, rng)) for o in originals] for t in TARGETS}
    measured = {t: float(np.mean([jaccard(a, b) for a, b in pairs])) for t, pairs in planted.items()}
    print(
        f"{len(originals)} documents of 300 words or more copied at each similarity; false positives among "
        f"all {len(corpus)} documents of 30 words or more"
    )
    print(
        f"{'shape':<34} "
        + " ".join(f"J={measured[t]:.2f}".rjust(8) for t in TARGETS)
        + f" {'false pos.':>10} {'B/doc':>6}"
    )
    for label, cfg in SHAPES.items():
        bands = Bands(cfg, seed=0)
        signed = {text: bands(text) for text in {*originals, *corpus}}
        found = []
        for t in TARGETS:
            hits = sum(any(x == y for x, y in zip(signed[a], bands(b))) for a, b in planted[t])
            found.append(hits / len(planted[t]))
        # different originals sharing a band: candidates prepare would link
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, text in enumerate(corpus):
            for position, value in enumerate(signed[text]):
                buckets[(position, value)].append(i)
        linked = {pair for ids in buckets.values() for pair in itertools.combinations(ids, 2)}
        false = sum(jaccard(corpus[i], corpus[j]) < 0.5 for i, j in linked)
        b, r = shape(cfg)
        print(f"{label:<34} " + " ".join(f"{f:8.0%}" for f in found) + f" {false:>4} of {len(linked):<3} {8 * b:>6}")
    print("B/doc: bytes per document of band hashes in the part files; the global step holds one band column")
    print("and its sorted copy at a time (16 bytes per document), whatever the number of bands.")
    print(
        "Theory, P(found | J) = 1 - (1 - J**r)**b: "
        + "; ".join(
            f"{label.split(',')[0]}: "
            + ", ".join(f"{1 - (1 - t ** shape(cfg)[1]) ** shape(cfg)[0]:.0%}" for t in TARGETS)
            for label, cfg in SHAPES.items()
        )
    )


if __name__ == "__main__":
    main()

"""Near-duplicate documents: MinHash over word n-grams, LSH bands, and one global decision that
reads the bands alone, never the texts (datatrove's minhash stages are the reference design).

Per document, in any worker (prepare's step 1): the MinHash signature (datasketch) of its set of
word n-grams, cut into `b` bands of `r` values, each band hashed to 64 bits. A pair of documents
whose n-gram sets have Jaccard similarity J shares a band with probability 1 - (1 - J**r)**b: with
FineWeb's 14 bands of 8 (the default), 92% at J = 0.8, 56% at 0.7, 5% at 0.5. Given a `threshold`
instead, `b` and `r` are what datasketch's MinHashLSH picks for it. The part file holds the bands:
8 * b bytes per document (112 at the default).

Once, over every part (step 2): documents that share a band in the same position are candidates.
Reading one band position at a time, each document that repeats an earlier document's band is
linked to the first document with that band; the connected components of those links (scipy) are
the groups of near-copies, and in each group the first document in input order is kept. Memory is
one band column and a sorted copy of it at a time (16 bytes per document), plus the links.

The signatures depend only on the text and the seed and the groups only on the bands and the input
order, so the kept set is the same for any number of workers or array tasks.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import polars as pl
import xxhash

from miniplm.schema.corpus import NearDuplicateConfig


@lru_cache(maxsize=None)
def lsh_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for the threshold."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def shape(cfg: NearDuplicateConfig) -> tuple[int, int]:
    """(bands, rows per band): as given, or tuned for the threshold when one is given."""
    if cfg.threshold is None:
        return cfg.bands, cfg.rows
    return lsh_shape(cfg.threshold, cfg.num_perm)


def band_columns(cfg: NearDuplicateConfig) -> list[str]:
    bands, _ = shape(cfg)
    return [f"_band_{i:02d}" for i in range(bands)]


class Bands:
    """A document's LSH band hashes, from its normalised text (words separated by single spaces)."""

    def __init__(self, cfg: NearDuplicateConfig, seed: int):
        from datasketch import MinHash

        self.cfg = cfg
        self.bands, self.rows = shape(cfg)
        self._template = MinHash(num_perm=cfg.num_perm, seed=seed)  # its permutations, drawn once

    def __call__(self, normalised: str) -> list[int]:
        from datasketch import MinHash

        words = normalised.split(" ")
        n = self.cfg.ngram
        shingles = {" ".join(words[i : i + n]).encode() for i in range(max(len(words) - n + 1, 1))}
        # xxh32 instead of datasketch's default sha1: the same 32-bit hashes, five times faster
        sig = MinHash(
            num_perm=self.cfg.num_perm,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
            hashfunc=xxhash.xxh32_intdigest,
        )
        sig.update_batch(list(shingles))
        values = sig.hashvalues[: self.bands * self.rows].astype(np.uint32).reshape(self.bands, self.rows)
        return [xxhash.xxh64_intdigest(band.tobytes()) for band in values]


def _links(band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) pairs: position i repeats the band of position j, the first position holding it.

    Repeated hashes are few: a plain sort finds them (an argsort of every position would cost ten
    times as long), and only the positions holding them are ordered.
    """
    ranked = np.sort(band)
    repeated = np.unique(ranked[1:][ranked[1:] == ranked[:-1]])
    del ranked
    if not len(repeated):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    holders = np.flatnonzero(pl.Series(band).is_in(pl.Series(repeated).implode()).to_numpy())
    values = band[holders]
    order = np.argsort(values, kind="stable")  # equal hashes stay in position order
    values, holders = values[order], holders[order]
    first = np.r_[True, values[1:] != values[:-1]]
    firsts = holders[np.flatnonzero(first)][np.cumsum(first) - 1]
    return holders[~first], firsts[~first]


def near_copies(read_band: Callable[[str], np.ndarray], columns: list[str], eligible: np.ndarray) -> np.ndarray:
    """Per row: the row it is a near-copy of (the first of its group, in row order), or -1.

    `read_band(name)` gives one band column for every row; only `eligible` rows take part (rows
    already dropped as exact duplicates do not link anything). Peak memory is about 9 bytes per
    row beyond the band being linked (a sorted copy of it, then a mask), plus the links found.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    everyone = bool(eligible.all())
    rows = None if everyone else np.flatnonzero(eligible)
    links_from, links_to = [], []
    for name in columns:
        band = read_band(name)
        a, b = _links(band if everyone else band[rows])
        links_from.append(a)
        links_to.append(b)
    out = np.full(len(eligible), -1, dtype=np.int64)
    src, dst = np.concatenate(links_from), np.concatenate(links_to)
    if not len(src):
        return out
    nodes = np.unique(np.concatenate([src, dst]))  # only linked rows enter the graph
    graph = coo_matrix(
        (np.ones(len(src), dtype=np.int8), (np.searchsorted(nodes, src), np.searchsorted(nodes, dst))),
        shape=(len(nodes), len(nodes)),
    )
    _, label = connected_components(graph, directed=False)
    # nodes are in position order, so a label's first occurrence is its group's first position
    _, first_node = np.unique(label, return_index=True)
    keeper = nodes[first_node[label]]
    copies = keeper != nodes
    if everyone:
        out[nodes[copies]] = keeper[copies]
    else:
        out[rows[nodes[copies]]] = rows[keeper[copies]]
    return out

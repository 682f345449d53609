"""Near-duplicate documents: MinHash over word n-grams and LSH bands; the decision reads the bands
alone, never the texts (datatrove's minhash stages are the reference design).

Per document, in any worker (prepare's step 1): the MinHash signature (datasketch) of its set of
word n-grams, cut into `b` bands of `r` values, each band hashed to 64 bits. A pair of documents
whose n-gram sets have Jaccard similarity J shares a band with probability 1 - (1 - J**r)**b: with
FineWeb's 14 bands of 8 (the default), 92% at J = 0.8, 56% at 0.7, 5% at 0.5. Given a `threshold`
instead, `b` and `r` are what datasketch's MinHashLSH picks for it. The part file holds the bands:
8 * b bytes per document (112 at the default).

Then (corpus/dedup.py), partitioned by band value: documents that share a band in the same
position are joined; the connected components (scipy) are the groups of near-copies, and in each
group the first document in input order is kept.

The signatures depend only on the text and the seed and the groups only on the bands and the input
order, so the kept set is the same for any number of workers or array tasks.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
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

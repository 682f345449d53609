"""A uniform draw per unit from a seeded hash of its id alone; seeds derived from names and numbers.

The random strategies (`random`, `difference-sample`) and the random controls draw a number per
unit. Drawn from its id and the seed, and nothing else, it is the same whichever shard holds the
unit and whichever task reads it: a task decides its own units without seeing anyone else's.

The hash is FNV-1a over the id's UTF-8 bytes, started from the seed and finished with
splitmix64's mixer (so that ids differing in one character land far apart); written in numpy over
the Arrow buffers of a chunk of ids, so that it is stable across library versions, unlike
polars' own `hash`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pyarrow as pa

CHUNK = 1 << 20
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_ids(ids: pl.Series, seed: int) -> np.ndarray:
    """A 64-bit hash of each id (uint64), seeded."""
    out = np.empty(len(ids), dtype=np.uint64)
    start_state = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0] ^ FNV_OFFSET
    for start in range(0, len(ids), CHUNK):
        chunk = pa.array(ids.slice(start, CHUNK).to_arrow()).cast(pa.large_string())
        _, offsets, data = chunk.buffers()
        ends = np.frombuffer(offsets, dtype=np.int64, count=len(chunk) + 1, offset=chunk.offset * 8)
        data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        begin, lengths = ends[:-1], np.diff(ends)
        h = np.full(len(chunk), start_state, dtype=np.uint64)
        for j in range(int(lengths.max()) if len(lengths) else 0):
            live = np.flatnonzero(lengths > j)  # ids still having a j-th byte
            h[live] = (h[live] ^ data[begin[live] + j].astype(np.uint64)) * FNV_PRIME
        out[start : start + len(chunk)] = _mix(h)
    return out


def uniform_by_id(ids: pl.Series, seed: int) -> np.ndarray:
    """A uniform draw in (0, 1) per id: the top 53 bits of its seeded hash, never exactly 0 or 1."""
    return ((hash_ids(ids, seed) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from its parts (a job's seed, names, shard and batch numbers): the same parts,
    the same seed, on any machine; a worker resuming a shard draws what it would have drawn."""
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)

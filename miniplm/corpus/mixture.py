"""A token set drawn from other token sets in given shares: text the teacher wrote mixed with original text,
say (DistilQwen2.5's recipe), or any blend of corpora.

Shares are of rows, and so of tokens (every row holds seq_len + 1). The mix
is the largest one in which no row repeats: with shares s_i and r_i rows
available, it holds floor(T * s_i) rows of set i for T = min_i r_i / s_i.
Which rows, and their order, are a pure function of the seed: a seeded
random subset of each set, then one seeded shuffle of them all, written as
ordinary token shards (so training and stored teacher log-probs read them
like any token set).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from miniplm.corpus.row_sources import token_set_sources, write_sources
from miniplm.corpus.tokens import TokenRows, write_rows
from miniplm.errors import StageError
from miniplm.files import atomic_write_json
from miniplm.rundir import shard_name

ROWS_PER_SHARD = 65536
STATS_FILE = "mixture.json"


def mixture_counts(available: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """Rows to take from each set: the shares of `weights`, as many as fit without repeating a row."""
    top = max(weights.values())  # scaled first, so that no sum overflows
    total_weight = sum(w / top for w in weights.values())
    shares = {k: w / top / total_weight for k, w in weights.items()}
    total = min(available[k] / s for k, s in shares.items())
    return {k: min(math.floor(total * s + 1e-9), available[k]) for k, s in shares.items()}


def _take(rows: TokenRows, indices: np.ndarray) -> np.ndarray:
    if not len(indices):
        return np.zeros((0, rows.width), dtype=np.int32)
    return np.stack([rows[int(i)] for i in indices])


def write_mixture(out: Path, components: dict[str, Path], weights: dict[str, float], seed: int) -> dict:
    """Write the mixed shards into `out`; the counts (rows and tokens, and per set: weight, rows used, rows
    available)."""
    sets = {name: TokenRows(folder) for name, folder in components.items()}
    empty = [name for name, rows in sets.items() if not len(rows)]
    if empty:  # the largest mix in the shares is then the empty one: say which set is at fault
        raise StageError(
            f"token set {out.name!r} mixes token set {empty[0]!r}, which holds no rows "
            f"({components[empty[0]]}): check what it was made from, or leave it out of the mix"
        )
    widths = {r.width for r in sets.values() if len(r)}
    if len(widths) > 1:
        raise ValueError(f"{out.name}: the mixed token sets have rows of different widths {sorted(widths)}")
    counts = mixture_counts({n: len(r) for n, r in sets.items()}, weights)
    chosen = {
        name: np.sort(np.random.default_rng([seed, i]).permutation(len(sets[name]))[: counts[name]])
        for i, name in enumerate(sets)
    }
    picked = [_take(sets[name], indices) for name, indices in chosen.items()]
    rows = np.concatenate(picked) if picked else np.zeros((0, 0), dtype=np.int32)
    order = np.random.default_rng([seed, len(sets)]).permutation(len(rows))
    rows = rows[order]
    sources = [token_set_sources(folder) for folder in components.values()]
    if all(s is not None for s in sources):  # every set knows where its rows come from: so does the mix
        sources = pa.concat_tables([s.take(chosen[name]) for s, name in zip(sources, sets)]).take(order)
    out.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, len(rows), ROWS_PER_SHARD)):
        write_rows(out / shard_name(k, ".arrow"), rows[start : start + ROWS_PER_SHARD])
        if isinstance(sources, pa.Table):
            write_sources(out / shard_name(k, ".arrow"), sources.slice(start, ROWS_PER_SHARD))
    stats = {
        "rows": int(len(rows)),
        "tokens": int(rows.size),
        "shards": math.ceil(len(rows) / ROWS_PER_SHARD),
        "mix": {n: {"weight": weights[n], "rows": counts[n], "rows_available": len(sets[n])} for n in sets},
    }
    atomic_write_json(out / STATS_FILE, stats)
    return stats

import numpy as np
import polars as pl

from miniplm.draws import uniform_by_id

MASK = 2**64 - 1


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _draw(unit_id: str, seed: int) -> float:
    """The documented draw, one byte at a time: FNV-1a from the mixed seed, then splitmix64's mixer."""
    h = _mix(seed) ^ 0xCBF29CE484222325
    for byte in unit_id.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return ((_mix(h) >> 11) + 0.5) / 2**53


def test_each_draw_is_its_ids_seeded_hash_whatever_else_is_drawn_with_it():
    ids = ["a", "b", "é", "", "doc-00042", "x" * 300, "日本語/7"]
    draws = uniform_by_id(pl.Series(ids), 5)
    assert draws.tolist() == [_draw(i, 5) for i in ids]
    assert uniform_by_id(pl.Series(ids[3:]), 5).tolist() == draws[3:].tolist()
    assert uniform_by_id(pl.Series(ids), 6).tolist() != draws.tolist()


def test_draws_are_uniform_and_never_0_or_1():
    ids = pl.int_range(0, 200_000, eager=True).cast(pl.String).str.zfill(9)
    u = uniform_by_id(ids, 0)
    assert 0.0 < u.min() and u.max() < 1.0
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    expected = len(u) / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.8  # the 99.9th percentile of chi-square with 19 degrees of freedom
    assert len(np.unique(u)) == len(u)

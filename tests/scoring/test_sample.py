import polars as pl
import pytest

from miniplm.schema.proxy import ProxyConfig
from miniplm.scoring.sample import held_out, in_sample, rates


def test_each_source_gets_the_share_or_enough_units_and_a_small_one_all():
    cfg = ProxyConfig(sample_fraction=0.01, min_source_units=20)
    got = rates({"web": 100_000, "books": 1_000, "tiny": 7}, cfg)
    assert got == {"web": 0.01, "books": 0.02, "tiny": 1.0}
    by_units = rates({"web": 100_000, "books": 1_000}, ProxyConfig(sample_units=5_050, min_source_units=1))
    assert by_units == {"web": pytest.approx(0.05), "books": pytest.approx(0.05)}


def test_the_sample_is_a_property_of_each_id_and_matches_its_rate():
    ids = pl.Series([f"doc-{i}" for i in range(40_000)])
    sources = pl.Series(["web", "books"] * 20_000)
    source_rates = {"web": 0.1, "books": 0.5}
    chosen = in_sample(ids, sources, source_rates, seed=7)
    assert chosen[0::2].mean() == pytest.approx(0.1, abs=0.01)
    assert chosen[1::2].mean() == pytest.approx(0.5, abs=0.01)
    # the same units whichever shard holds them and in whatever order
    again = in_sample(ids[::-1], sources[::-1], source_rates, seed=7)[::-1]
    assert (again == chosen).all()
    assert (in_sample(ids[1000:2000], sources[1000:2000], source_rates, seed=7) == chosen[1000:2000]).all()
    assert (in_sample(ids, sources, source_rates, seed=8) != chosen).any()  # the seed draws another sample
    # an unknown source is sampled at the largest rate
    assert in_sample(ids, pl.Series(["new"] * 40_000), source_rates, seed=7).mean() == pytest.approx(0.5, abs=0.01)


def test_held_out_units_are_the_asked_share_and_not_the_sample_draw():
    ids = pl.Series([f"doc-{i}" for i in range(20_000)])
    out = held_out(ids, ProxyConfig(holdout_fraction=0.2), seed=7)
    assert out.mean() == pytest.approx(0.2, abs=0.01)
    sample = in_sample(ids, pl.Series(["s"] * 20_000), {"s": 0.2}, seed=7)
    assert 0.02 < (out & sample).mean() < 0.06  # independent draws: about 0.2 x 0.2


def test_one_sample_size():
    with pytest.raises(ValueError, match="one sample size"):
        ProxyConfig(sample_fraction=0.1, sample_units=10)
    assert ProxyConfig(sample_units=10).sample_fraction is None

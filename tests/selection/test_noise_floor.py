"""The noise floor: auto (median minus k median absolute deviations), a fixed number, or off."""

import statistics

import numpy as np
import polars as pl
import pytest
from scipy.stats import median_abs_deviation

from miniplm.config import SelectConfig
from miniplm.selection.noise_floor import AUTO_MIN_DOCUMENTS, floor_of, noise_floor
from miniplm.selection.strategies import decide
from miniplm.selection.tally import counts, tally


def scores(teacher_per_token: list[float], n_tokens: list[int] | None = None) -> pl.DataFrame:
    n = n_tokens or [20] * len(teacher_per_token)
    return pl.DataFrame(
        {
            "id": [f"d{i:04d}" for i in range(len(n))],
            "source": ["s"] * len(n),
            "n_tokens": n,
            "teacher_logprob": [t * k for t, k in zip(teacher_per_token, n)],
            "reference_logprob": [-6.0 * k for k in n],
        }
    )


def test_auto_floor_is_the_median_minus_k_absolute_deviations():
    rng = np.random.default_rng(0)
    real = rng.normal(-3.0, 0.4, 300).tolist()
    noise = rng.normal(-7.0, 0.5, 20).tolist()
    values = real + noise
    median = statistics.median(values)
    mad = median_abs_deviation(values, scale="normal")
    for k in (3.0, 5.0):
        floor = noise_floor(SelectConfig(noise_floor_mads=k), np.array(values))
        assert floor.rule == "auto" and floor.documents == 320
        assert floor.threshold == pytest.approx(median - k * mad) and floor.mad == pytest.approx(mad)
        d = decide(scores(values), SelectConfig(noise_floor_mads=k, keep_fraction=1.0), 0)
        below = d.filter(pl.col("reason") == "low_teacher_logprob")["id"].to_list()
        assert below == [f"d{i:04d}" for i, v in enumerate(values) if v * 20 / 20 < median - k * mad]
        assert floor_of(d, SelectConfig(noise_floor_mads=k)) == floor  # the report measures the same floor
    # at k = 3 the floor lies between the real text and the noise: all noise below, no real text
    d = decide(scores(values), SelectConfig(keep_fraction=1.0), 0)
    assert set(d.filter(pl.col("reason") == "low_teacher_logprob")["id"]) == {f"d{i:04d}" for i in range(300, 320)}
    assert counts(tally(d))["dropped"]["low_teacher_logprob"] == 20 and counts(tally(d))["kept"] == 300


def test_the_floor_is_measured_after_the_length_and_finite_checks():
    rng = np.random.default_rng(1)
    values = rng.normal(-3.0, 0.4, 100).tolist() + [-12.0] * 80  # 80 two-token fragments, very unlikely
    d = decide(scores(values, [20] * 100 + [2] * 80), SelectConfig(min_tokens=5, keep_fraction=1.0), 0)
    floor = floor_of(d, SelectConfig())
    assert floor.documents == 100 and floor.median == pytest.approx(statistics.median(values[:100]))
    assert counts(tally(d))["dropped"]["too_few_tokens"] == 80


def test_fixed_off_and_no_auto_floor_without_enough_documents_or_spread():
    values = np.linspace(-5, -1, 100)
    assert noise_floor(SelectConfig(min_teacher_logprob=-4.5), values).threshold == -4.5
    assert noise_floor(SelectConfig(min_teacher_logprob=None), values).rule == "off"
    few = noise_floor(SelectConfig(), values[: AUTO_MIN_DOCUMENTS - 1])
    assert few.threshold is None and "fewer than" in few.note
    flat = noise_floor(SelectConfig(), np.array([-2.0] * 60 + [-9.0] * 40))
    assert flat.threshold is None and flat.mad == 0.0
    assert "no auto noise floor" in flat.describe()
    assert "auto noise floor at" in noise_floor(SelectConfig(), values).describe()
    assert SelectConfig().min_teacher_logprob == "auto"
    with pytest.raises(ValueError):
        SelectConfig(min_teacher_logprob="median")

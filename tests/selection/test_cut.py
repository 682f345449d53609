"""The sharded selection (rank's runs, select's cut, each task's own decisions) makes exactly the
decisions `decide` makes on the whole corpus in one process."""

import itertools

import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from miniplm.config import SelectConfig
from miniplm.rundir import RunDir
from miniplm.selection import cut as cuts
from miniplm.selection.rank import read_score_shard, runs, write_run
from miniplm.selection.strategies import decide, random_baseline
from tests.conftest import REPO


def score_set(rng: np.random.Generator, n: int, unit: str) -> pl.DataFrame:
    """Scores with ties (rounded per-token log-probs), huge units, broken scores and several sources."""
    if unit == "instance":  # full instances, and the short last ones of their documents
        length = np.where(rng.random(n) < 0.1, rng.integers(1, 64, n), 64)
    else:
        length = np.clip(rng.lognormal(3.5, 1.2, n), 1, None).astype(np.int64)
        length[rng.random(n) < 0.02] = rng.integers(2_000, 20_000)  # huge documents
    teacher = np.round(rng.normal(-3, 0.6, n), 1)
    teacher[rng.random(n) < 0.05] -= 5  # noise, for the floor
    reference = teacher - np.round(rng.normal(0.6, 0.5, n), 1)
    t, r = teacher * length, reference * length
    t[rng.random(n) < 0.01] = np.nan
    r[rng.random(n) < 0.01] = -np.inf
    table = {
        "id": [f"{unit[0]}{k:05d}" for k in rng.permutation(n)],
        "source": rng.choice(["web", "books", "code", "wiki", "forum"], n, p=[0.5, 0.2, 0.15, 0.1, 0.05]),
        "n_tokens": length,
        "teacher_logprob": t,
        "reference_logprob": r,
    }
    if unit == "document":  # scored on prefixes: budgets count the whole documents
        table["doc_tokens"] = length + rng.integers(0, 3, n) * (length > 100) * 50
    return pl.DataFrame(table)


def reference(scores: pl.DataFrame, cfg: SelectConfig, seed: int) -> pl.DataFrame:
    d = decide(scores, cfg, seed)
    for control in cfg.random_controls:
        d = d.with_columns(random_baseline(scores, d, seed, control.pool))
    return d


def sharded(root, scores: pl.DataFrame, cfg: SelectConfig, seed: int, shard_rows: int) -> pl.DataFrame:
    rd = RunDir(root)
    rd.scores.mkdir(parents=True)
    n_shards = 0
    for n_shards, start in enumerate(range(0, scores.height, shard_rows), start=1):
        scores.slice(start, shard_rows).write_parquet(rd.score_shard(n_shards - 1))
    rd.ranked.mkdir()
    for index, shards in enumerate(runs(rd, cfg)):
        write_run(rd, index, shards, cfg, seed, cfg.random_controls)
    cut = cuts.compute(rd, cfg, seed)
    return pl.concat([cuts.apply(read_score_shard(rd.score_shard(i)), cut, cfg, seed) for i in range(n_shards)])


BUDGETS = [{"keep_fraction": 0.4}, {"keep_fraction": None, "keep_token_fraction": 0.3}, {"keep_fraction": None}]
STRATEGIES = [
    {"strategy": "difference"},
    {"strategy": "difference-sample", "temperature": 0.5},
    {"strategy": "random"},
    {"strategy": "teacher"},
    {"strategy": "perplexity", "perplexity_band": "low"},
    {"strategy": "perplexity", "perplexity_band": "high"},
]
CASES = [
    (unit, strategy, budget, cap, floor)
    for (unit, strategy, budget, cap, floor) in itertools.product(
        ["document", "instance"], STRATEGIES, BUDGETS, [None, 0.35], ["auto", -4.0, None]
    )
]
# one case in five, spread over every axis: the whole product runs in minutes, this in seconds
CASES = CASES[::5]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_sharded_cut_decides_every_unit_as_decide_does(tmp_path, monkeypatch, case):
    unit, strategy, budget, cap, floor = CASES[case]
    if case % 2:  # record batches of 16 units: the merge reads each run in many pieces
        monkeypatch.setattr("miniplm.selection.rank.ROWS_PER_BATCH", 16)
    rng = np.random.default_rng(case)
    scores = score_set(rng, 1500, unit)
    if budget.get("keep_fraction", 0.5) is None and "keep_token_fraction" not in budget:
        budget = {"keep_fraction": None, "keep_tokens": int(scores["n_tokens"].sum() // 4)}
    cfg = SelectConfig(
        **strategy,
        **budget,
        max_source_fraction=cap,
        min_teacher_logprob=floor,
        min_tokens=3,
        random_baseline="both",
        units_per_run=400,  # four runs, of two score shards each
    )
    expected = reference(scores, cfg, 7)
    got = sharded(tmp_path, scores, cfg, 7, shard_rows=200)
    assert got.columns == expected.columns
    assert_frame_equal(got, expected)
    assert expected["kept"].sum() > 0 and expected["random_kept"].sum() > 0


def test_units_after_one_too_big_fill_what_it_left_across_runs(tmp_path):
    # ranking a b c d (each its own run): a fits, b (1000 tokens) does not fit in the 50 left, c and d do
    scores = pl.DataFrame(
        {
            "id": ["b", "a", "c", "d"],
            "source": ["s"] * 4,
            "n_tokens": [1000, 50, 30, 20],
            "teacher_logprob": [-1000.0, -50.0, -30.0, -20.0],
            "reference_logprob": [-4000.0, -250.0, -60.0, -30.0],
        }
    )
    cfg = SelectConfig(keep_fraction=None, keep_tokens=100, min_teacher_logprob=None, units_per_run=1)
    got = sharded(tmp_path, scores, cfg, 0, shard_rows=1)
    assert_frame_equal(got, reference(scores, cfg, 0))
    cut = cuts.compute(RunDir(tmp_path), cfg, 0)
    assert cut.boundary == [3.0, "b"] and cut.extras == ["c", "d"] and cut.kept_length == 100


# the bundled jobs that select (demo-gpu-teacher.yaml trains the GPU demo's teacher and selects nothing)
JOBS = [
    p for p in sorted((REPO / "jobs").glob("*.yaml")) if {"teacher", "reference"} <= set(yaml.safe_load(p.read_text()))
]


@pytest.mark.parametrize("job_file", JOBS, ids=lambda p: p.name)
def test_every_bundled_jobs_selection_is_decided_as_decide_does(tmp_path, job_file):
    job = yaml.safe_load(job_file.read_text())  # its select settings (its models need not be here)
    unit = job.get("score", {}).get("unit", "document")
    scores = score_set(np.random.default_rng(len(job_file.name)), 3000, unit)
    cfg = SelectConfig(**job.get("select", {}), units_per_run=700)
    if cfg.keep_tokens is not None:  # a budget for the synthetic set's size
        cfg = cfg.model_copy(update={"keep_tokens": int(scores["n_tokens"].sum() // 3)})
    expected = reference(scores, cfg, job.get("seed", 0))
    assert_frame_equal(sharded(tmp_path, scores, cfg, job.get("seed", 0), shard_rows=300), expected)
    assert expected["kept"].sum() > 0

"""The random controls: raw (drawn from every scored unit, MiniPLM's no-refinement baseline) and
filtered (drawn from the pool the strategy ranks, after every filter), each of the selection's token
budget, each written to its own folder and shown in the summary, the printed lines and the report."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from miniplm.config import ConfigError, JobConfig, SelectConfig
from miniplm.draws import uniform_by_id
from miniplm.schema.select import RANDOM_CONTROLS
from miniplm.selection import select
from miniplm.selection.strategies import control_seed, decide, random_baseline
from tests.selection.test_select import make_scored_run, run_select

FILTERED_OUT = ("non_finite_score", "too_few_tokens", "low_teacher_logprob")


def noisy_table(n: int = 400) -> pl.DataFrame:
    """Units of 1 to 40 tokens; every 8th far too hard for the teacher (and ranked high), a few broken."""
    i = np.arange(n)
    length = 1 + (i * 37) % 40
    teacher = np.where(i % 8 == 0, -6.0, -1.0 - (i % 5) / 10) * length
    reference = teacher - (0.5 + (i % 8 == 0) + (i % 11) / 10) * length
    teacher[i % 97 == 5] = np.nan
    return pl.DataFrame(
        {
            "id": [f"u{k:04d}" for k in i],
            "source": ["a", "b"] * (n // 2),
            "n_tokens": length,
            "teacher_logprob": teacher,
            "reference_logprob": reference,
        }
    )


def _within_budget(table: pl.DataFrame, chosen: pl.Series, pool: pl.Series, budget: int, seed: int) -> None:
    """The pool's smallest draws, while they fit: spent no more than the budget, and the first draw left
    out would not have fit."""
    drawn = table.with_columns(u=uniform_by_id(table["id"], seed), chosen=chosen).filter(pool).sort("u", "id")
    cut = drawn["chosen"].arg_min()
    assert drawn["chosen"][:cut].all() and not drawn["chosen"][cut:].any()
    spent = int(drawn.filter("chosen")["n_tokens"].sum())
    assert spent <= budget < spent + drawn["n_tokens"][cut]


def test_filtered_control_is_drawn_only_from_what_every_filter_left():
    table = noisy_table()
    cfg = SelectConfig(keep_fraction=None, keep_token_fraction=0.3, min_teacher_logprob=-3.0, min_tokens=4)
    d = decide(table, cfg, 0)
    reasons = d["reason"].cast(pl.String)
    dropped = dict(reasons.filter(reasons.is_in(FILTERED_OUT)).value_counts().iter_rows())
    assert dropped == {"non_finite_score": 5, "too_few_tokens": 30, "low_teacher_logprob": 39}
    filtered_pool = reasons.is_null() | ~reasons.is_in(FILTERED_OUT)
    raw_pool = reasons.is_null() | (reasons != "non_finite_score")
    budget = int(d.filter(pl.col("kept"))["n_tokens"].sum())

    raw, filtered = random_baseline(table, d, 0, "raw"), random_baseline(table, d, 0, "filtered")
    assert (raw.name, filtered.name) == ("random_kept", "random_filtered_kept")
    assert set(table.filter(filtered)["id"]) <= set(table.filter(filtered_pool)["id"])
    assert not (filtered & ~filtered_pool).any()
    # the raw control reaches what the noise floor and min_tokens dropped; never a broken score
    assert (raw & (reasons == "low_teacher_logprob")).sum() > 3 and (raw & (reasons == "too_few_tokens")).sum() > 3
    assert not (raw & ~raw_pool).any()
    for chosen, pool, control in ((raw, raw_pool, RANDOM_CONTROLS[0]), (filtered, filtered_pool, RANDOM_CONTROLS[1])):
        _within_budget(table, chosen, pool, budget, control_seed(0, control))
    # seeded, and independent of row order
    assert random_baseline(table.reverse(), d.reverse(), 0, "filtered").reverse().to_list() == filtered.to_list()
    assert random_baseline(table, d, 1, "filtered").to_list() != filtered.to_list()
    with pytest.raises(ValueError, match="raw or filtered"):
        random_baseline(table, d, 0, "noise")


def test_random_baseline_setting():
    assert [c.folder for c in SelectConfig(random_baseline=True).random_controls] == ["selected-random"]
    assert [c.folder for c in SelectConfig(random_baseline="raw").random_controls] == ["selected-random"]
    assert [c.folder for c in SelectConfig(random_baseline="filtered").random_controls] == ["selected-random-filtered"]
    assert [c.pool for c in SelectConfig(random_baseline="both").random_controls] == ["raw", "filtered"]
    assert SelectConfig().random_controls == ()
    with pytest.raises(ValueError, match=r"give false, raw \(true means raw\), filtered or both \(got 'all'\)"):
        SelectConfig(random_baseline="all")

    def job(random_baseline, folder):
        from miniplm.stages import check_job

        job = JobConfig.model_validate(
            {
                "run_dir": "run",
                "corpus": {"inputs": [{"path": "x.jsonl", "format": "jsonl"}]},
                "select": {"random_baseline": random_baseline},
                "tokenize": [{"name": "control", "input": folder}],
                "students": [{"name": "student", "tokens": "control", "preset": "tiny", "steps": 1}],
            }
        )
        check_job(job)  # the tokenize stage checks that select draws the control a token set reads
        return job

    from miniplm import compute

    both = job("both", "selected-random-filtered")
    assert both.tokenize[0].input == "selected-random-filtered"
    assert compute.upstream(both, both.students[0]) == set()  # charged its training alone, as the raw control
    with pytest.raises(ValueError, match="input selected-random-filtered needs select.random_baseline: filtered"):
        job(True, "selected-random-filtered")
    with pytest.raises(ValueError, match="input selected-random needs select.random_baseline: raw"):
        job("filtered", "selected-random")


NOISY = [f"doc-{i:03d}" for i in range(200) if i % 10 == 3]  # 20 documents, scored as high as their neighbours


def _rows(run_dir, folder: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted((Path(run_dir) / folder).glob("shard-*.parquet"))])


def test_select_writes_both_controls_of_the_selections_budget_and_reports_them(tmp_path):
    job = make_scored_run(
        tmp_path,
        noisy=NOISY,
        keep_fraction=None,
        keep_token_fraction=0.5,
        min_teacher_logprob=-2.0,
        random_baseline="both",
    )
    counts = run_select(job, show_progress=False)
    assert counts["dropped"]["low_teacher_logprob"] == 20
    selected, raw, filtered = (
        _rows(job.run_dir, f) for f in ("selected", "selected-random", "selected-random-filtered")
    )
    budget = counts["tokens_kept"]
    lengths = {f"doc-{i:03d}": i % 13 + 1 for i in range(200)}
    assert sum(lengths[i] for i in selected["id"]) == budget
    for rows, entry, pool, pool_units in (
        (raw, "random_baseline", "raw", 200),
        (filtered, "random_baseline_filtered", "filtered", 180),
    ):
        tokens = sum(lengths[i] for i in rows["id"])
        assert budget - 13 < tokens <= budget  # whole documents of at most 13 tokens, up to the budget
        assert counts[entry] == {
            "pool": pool,
            "folder": f"selected-{'random' if pool == 'raw' else 'random-filtered'}",
            "label": f"random ({pool})",
            "pool_units": pool_units,
            "pool_tokens": sum(lengths.values()) - (pool == "filtered") * sum(lengths[i] for i in NOISY),
            "kept": rows.height,
            "tokens": tokens,
        }
        assert rows.columns == ["id", "text", "source", "score"]
    assert set(filtered["id"]).isdisjoint(NOISY) and not set(raw["id"]).isdisjoint(NOISY)
    assert set(raw["id"]) != set(filtered["id"])

    lines = select.STAGE.describe(job, counts)
    for c, pool in (
        (counts["random_baseline"], "raw: from every scored unit, 200 documents"),
        (counts["random_baseline_filtered"], "filtered: from what the filters left, 180 documents"),
    ):
        assert (
            f"select: random control ({pool}) of the same token budget: {c['kept']:,} documents, "
            f"{c['tokens']:,} tokens, in {job.run_dir}/{c['folder']}"
        ) in lines

    report = Path(job.run_dir) / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["random_baseline"] == counts["random_baseline"]
    assert summary["random_baseline_filtered"] == counts["random_baseline_filtered"]
    page = (report / "index.html").read_text()
    assert "<h2>Random controls</h2>" in page
    for c in (counts["random_baseline"], counts["random_baseline_filtered"]):
        assert (
            f"<td>{c['label']}</td><td>" in page
            and f"<td>{c['pool_units']:,}</td><td>{c['pool_tokens']:,}</td>"
            f"<td>{c['kept']:,}</td><td>{c['tokens']:,}</td><td>{c['folder']}/</td>"
        ) in page

    # true is raw: the same draw, alone, and no filtered folder
    alone = make_scored_run(
        tmp_path,
        name="raw",
        noisy=NOISY,
        keep_fraction=None,
        keep_token_fraction=0.5,
        min_teacher_logprob=-2.0,
        random_baseline=True,
    )
    counts = run_select(alone, show_progress=False)
    assert "random_baseline_filtered" not in counts and not (Path(alone.run_dir) / "selected-random-filtered").exists()
    assert _rows(alone.run_dir, "selected-random")["id"].to_list() == raw["id"].to_list()
    assert "Random controls" in (Path(alone.run_dir) / "report" / "index.html").read_text()
    with pytest.raises(ConfigError, match="needs select.random_baseline: filtered"):
        import yaml

        from miniplm.job import load_job

        path = tmp_path / "raw.yaml"
        data = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**data, "tokenize": [{"name": "f", "input": "selected-random-filtered"}]}))
        load_job(path)

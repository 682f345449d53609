"""The drop table: per source, what prepare's filters and the selection's dropped in the main split,
in the stage's printed summary, summary.json and the report."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from miniplm.corpus import prepare
from miniplm.job import load_job
from miniplm.rundir import RunDir
from miniplm.selection.drops import drop_table, table_lines
from miniplm.selection.tally import tally
from tests.conftest import REPO, write_jsonl
from tests.corpus.test_near_duplicates import edited
from tests.corpus.test_quality import gibberish


def test_drop_table_counts_each_filter_per_source():
    prepared = {
        "web": {"few_stop_words": 3, "duplicate_lines": 2, "duplicates": 1, "near_duplicate": 4},
        "books": {"top_ngram": 1, "some_future_rule": 2},
    }
    reasons = {
        "web": [None] * 5 + ["low_teacher_logprob"] * 2 + ["below_cut"] * 3 + ["too_few_tokens"],
        "books": [None] * 7 + ["source_cap"] + ["non_finite_score"],
        "code": [None, "below_cut"],
    }
    decisions = pl.DataFrame(
        [{"source": s, "reason": r} for s, rs in reasons.items() for r in rs],
        schema={"source": pl.String, "reason": pl.String},
    )
    rows = {
        r["source"]: r
        for r in drop_table(
            prepared, tally(decisions.with_columns(kept=pl.col("reason").is_null(), n_tokens=pl.lit(1)))
        )
    }
    assert {k: v for k, v in rows["web"].items() if k != "reasons"} == {
        "source": "web",
        "documents": 21,
        "quality": 3,
        "repetition": 2,
        "duplicate": 1,
        "near_duplicate": 4,
        "noise_floor": 2,
        "unscorable": 1,
        "other": 0,
        "filtered": 13,
        "budget": 3,
        "kept": 5,
    }
    assert rows["books"]["other"] == 2 and rows["books"]["filtered"] == 1 + 2 + 1 and rows["books"]["budget"] == 1
    assert rows["code"]["documents"] == 2 and rows["code"]["filtered"] == 0 and rows["code"]["kept"] == 1
    assert rows["web"]["reasons"] == {
        "below_cut": 3,
        "duplicate_lines": 2,
        "duplicates": 1,
        "few_stop_words": 3,
        "low_teacher_logprob": 2,
        "near_duplicate": 4,
        "too_few_tokens": 1,
    }
    lines = table_lines(list(rows.values()))
    assert lines[0].split() == [
        "source",
        "documents",
        "quality",
        "repetition",
        "duplicate",
        "near_duplicate",
        "noise_floor",
        "unscorable",
        "other",
        "filtered",
        "budget",
        "kept",
    ]
    assert lines[3].split() == ["web", "21", "3", "2", "1", "4", "2", "1", "0", "13", "(61.9%)", "3", "5"]


def noisy_scored_run(tmp_path: Path):
    """KJV chapters (kept by prepare), gibberish (dropped by prepare), near-copies, and OCR-like
    documents that prepare keeps but the teacher scores far below the rest (synthetic scores)."""
    rng = np.random.default_rng(0)
    chapters = pl.read_parquet(REPO / "data" / "sample" / "kjv.parquet")
    kjv = chapters.filter(pl.col("id").str.contains(r"^kjv/(John|Acts|Romans)/"))
    rows = [{"id": i, "text": t, "src": "kjv"} for i, t in kjv.select("id", "text").iter_rows()]
    rows += [{"id": f"gib-{i}", "text": gibberish(rng), "src": "noise-gibberish"} for i in range(8)]
    rows += [{"id": f"copy-{i}", "text": edited(rows[i]["text"], 150, rng), "src": "copies"} for i in range(3)]
    # text prepare keeps, scored below the rest by the (synthetic) teacher below
    low = chapters.filter(pl.col("id").str.contains(r"^kjv/(Ruth|Jonah)/"))["text"]
    rows += [{"id": f"ocr-{i}", "text": t, "src": "noise-ocr"} for i, t in enumerate(low)]
    write_jsonl(tmp_path / "docs.jsonl", rows)
    job_path = tmp_path / "job.yaml"
    job_path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp_path / "run"),
                "seed": 0,
                "corpus": {
                    "inputs": [
                        {
                            "path": str(tmp_path / "docs.jsonl"),
                            "format": "jsonl",
                            "id_field": "id",
                            "source_field": "src",
                        }
                    ],
                    "reference_fraction": 0.0,
                    "heldout_fraction": 0.0,
                },
                "select": {"keep_fraction": 0.5},
            }
        )
    )
    job = load_job(job_path)
    prepare.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    (rd.root / "scores").mkdir()
    for k, shard in enumerate(rd.doc_shards("main")):
        d = pl.read_parquet(shard).select("id", "source")
        teacher = np.where(d["source"] == "noise-ocr", -8.0, -3.0 + rng.normal(0, 0.2, d.height))
        reference = rng.normal(-5, 0.5, d.height)
        d.with_columns(
            n_tokens=pl.lit(50), teacher_logprob=teacher * 50, reference_logprob=reference * 50
        ).write_parquet(rd.root / "scores" / f"shard-{k:05d}.parquet")
    rd.start_stage("score", "synthetic", outputs=["scores"])
    rd.finish_stage("score", {})  # records what it wrote, as the score stage does
    return job, job_path, kjv.height


def test_select_prints_and_reports_what_each_filter_dropped(tmp_path, capsys):
    from miniplm.cli import main

    job, job_path, n_kjv = noisy_scored_run(tmp_path)
    assert main(["rank", str(job_path), "-q"]) == 0 and main(["select", str(job_path), "-q"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((Path(job.run_dir) / "report" / "summary.json").read_text())
    rows = {r["source"]: r for r in summary["drops"]}
    assert rows["noise-gibberish"]["quality"] == rows["noise-gibberish"]["documents"] == 8
    assert rows["copies"]["near_duplicate"] == rows["copies"]["documents"] == 3
    assert rows["noise-ocr"]["noise_floor"] == rows["noise-ocr"]["documents"] == 8  # Ruth and Jonah
    assert rows["kjv"]["documents"] == n_kjv and rows["kjv"]["filtered"] == 0
    assert rows["kjv"]["kept"] + rows["kjv"]["budget"] == n_kjv
    assert sum(r["kept"] for r in rows.values()) == summary["kept"]
    floor = summary["noise_floor"]
    assert floor["rule"] == "auto" and -4.5 < floor["threshold"] < -3.0
    assert summary["dropped"]["low_teacher_logprob"] == 8

    assert f"auto noise floor at teacher log-prob {floor['threshold']:.3f} per token" in out
    assert "8 documents below it" in out
    table = out[out.index("  source ") :].splitlines()
    assert table[0].split()[:3] == ["source", "documents", "quality"]
    assert [line.split()[0] for line in table[1:5]] == ["copies", "kjv", "noise-gibberish", "noise-ocr"]
    assert table[3].split()[1:3] == ["8", "8"] and "(100.0%)" in table[3]

    page = (Path(job.run_dir) / "report" / "index.html").read_text()
    assert 'class="drops"' in page and 'class="drop-reasons"' in page and "auto noise floor at" in page
    assert "few_stop_words" in page and "near_duplicate" in page


def test_many_sources_share_a_row_beyond_the_largest():
    from miniplm.selection.drops import collapsed

    decisions = pl.DataFrame(
        [{"source": f"s{i:02d}", "reason": r} for i in range(25) for r in [None] * (i + 1) + ["below_cut"]],
        schema={"source": pl.String, "reason": pl.String},
    )
    rows = drop_table(
        {"s00": {"few_stop_words": 100}},
        tally(decisions.with_columns(kept=pl.col("reason").is_null(), n_tokens=pl.lit(1))),
    )
    shown = collapsed(rows, 20)
    assert len(shown) == 21 and shown[-1]["source"] == "(5 other sources)"
    assert {r["source"] for r in shown[:-1]} == {"s00", *(f"s{i:02d}" for i in range(6, 25))}  # the largest 20
    assert shown[-1]["documents"] == sum(i + 2 for i in range(1, 6)) and shown[-1]["budget"] == 5
    assert shown[-1]["reasons"] == {"below_cut": 5}
    for key in ("documents", "quality", "filtered", "budget", "kept"):
        assert sum(r[key] for r in shown) == sum(r[key] for r in rows)

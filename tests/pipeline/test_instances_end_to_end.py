"""The paper's method end to end on a tiny job: packed instances scored, the top half of the tokens
kept by difference score, the instances trained on as they are (and packed again from their text for
another tokenizer), two seeds per student, and every result shown against the FLOPs that produced
it, checked against a hand count."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import yaml

from miniplm.corpus.instance_rows import PAD
from miniplm.corpus.tokens import TokenRows
from miniplm.models.loading import load_tokenizer
from miniplm.scoring.instances import instance_text, piece_texts
from tests.pipeline.jobs import tiny_job

# the tiny preset (hidden 64, FFN 176, 2 layers, 4 heads, untied key/value heads) with the tiny
# models' 300-token vocabulary, per token: q, k, v, o and the MLP in both layers; the projection
BODY = 2 * 2 * (4 * 64 * 64 + 3 * 64 * 176)
HEAD = 2 * 64 * 300
PAIR = 2 * 4 * 64  # attention per (query, key) pair, both layers
STEPS, ROWS, SEQ = 6, 128 // 32, 32  # the tiny job's students: 6 steps of 4 rows of 32 inputs


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("instances")
    job_file = tiny_job(root, tiny_models, evaluation={"models": ["students"], "tasks": [], "seeds": 2})
    job = yaml.safe_load(job_file.read_text())
    job["tokenize"].append({"name": "other", "input": "selected", "tokenizer": tiny_models["other"], "seq_len": 32})
    job["score"]["unit"] = "instance"
    job["export"] = [
        {"name": "instances", "from": "selected", "format": "megatron"},
        {"name": "other", "from": "tokens/other", "format": "olmo-npy"},
        {"name": "rows", "from": "tokens/selected", "format": "mds"},
    ]
    job["select"] = {**job["select"], "keep_fraction": None, "keep_token_fraction": 0.5}
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "miniplm", "run", str(job_file), "-q"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", result.stdout, tiny_models


def _frame(folder) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(folder.glob("shard-*.parquet"))])


def test_kept_instances_are_the_top_by_difference_within_half_the_tokens(run):
    run_dir, stdout, _ = run
    scores = _frame(run_dir / "scores").filter(pl.col("n_tokens") > 0)
    budget = math.floor(0.5 * int(_frame(run_dir / "scores")["n_tokens"].sum()) + 0.5)
    ranked = sorted(
        scores.iter_rows(named=True),
        key=lambda r: (-(r["teacher_logprob"] - r["reference_logprob"]) / r["n_tokens"], r["id"]),
    )
    expected, left = set(), budget
    for r in ranked:
        if r["n_tokens"] <= left:
            expected.add(r["id"])
            left -= r["n_tokens"]
    selected = _frame(run_dir / "selected")
    assert set(selected["id"]) == expected
    assert selected.columns == ["id", "text", "source", "score", "n_tokens", "input_ids", "docs"]
    assert budget - left == selected["n_tokens"].sum()
    assert re.search(
        r"select: kept \d+ of \d+ instances \(\d+\.\d%\) and [\d,]+ of [\d,]+ tokens \(\d+\.\d%\)", stdout
    ), stdout

    docs = dict(_frame(run_dir / "docs" / "main").select("id", "text").iter_rows())
    for row in selected.head(20).iter_rows(named=True):
        assert row["text"] == instance_text(row["docs"], docs)
    random = _frame(run_dir / "selected-random")
    assert random["n_tokens"].sum() <= selected["n_tokens"].sum()


def test_instances_train_as_they_are_and_another_tokenizer_reads_their_text(run):
    run_dir, _, tiny_models = run
    selected = _frame(run_dir / "selected")
    rows = TokenRows(run_dir / "tokens" / "selected")
    assert rows.width == 33
    got = sorted(tuple(int(t) for t in rows[i] if t >= 0) for i in range(len(rows)))
    assert got == sorted(tuple(ids) for ids in selected["input_ids"] if len(ids) > 1)  # no re-tokenizing

    other = load_tokenizer(tiny_models["other"])
    stream = []
    for text, pieces in selected.select("text", "docs").iter_rows():
        for piece, p in zip(piece_texts(text, pieces), pieces):
            stream += other(piece, add_special_tokens=False)["input_ids"] + (
                [other.eos_token_id] if p["ends_doc"] else []
            )
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert manifest["tokenize/other"]["counts"]["tokens"] == len(stream)
    assert manifest["tokenize/selected"]["counts"]["pad_tokens"] == int(
        sum((rows[i] < 0).sum() for i in range(len(rows)))
    )


def test_flops_recorded_for_training_are_the_hand_count(run):
    run_dir, _, _ = run
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    forward = SEQ * (BODY + HEAD) + PAIR * SEQ * (SEQ + 1) / 2  # one row of 32 inputs, all projected
    for name in ("on-selected", "on-selected.seed1", "on-random", "on-random.seed1"):
        flops = stages[f"train/{name}"]["counts"]["flops"]
        assert flops["by"]["training"] == pytest.approx(3 * STEPS * ROWS * forward)
    held = len(TokenRows(run_dir / "tokens" / "heldout"))
    evaluations = 2  # steps 3 and 6 (eval_every 3)
    assert stages["train/on-selected"]["counts"]["flops"]["by"]["heldout"] == pytest.approx(
        evaluations * min(16, held) * forward
    )
    assert stages["train/on-selected"]["counts"]["seed"] + 1 == stages["train/on-selected.seed1"]["counts"]["seed"]


def test_comparison_shows_seeds_and_compute(run):
    run_dir, stdout, _ = run
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    students = ["on-selected", "on-selected.seed1", "on-random", "on-random.seed1"]
    assert list(results) == [*students, "unigram (selected)", "unigram (random)"]  # one per token set, not per seed
    scoring = stages["score"]["counts"]["flops"]["total"]
    for name in students:
        r = results[name]
        training = stages[f"train/{name}"]["counts"]["flops"]["by"]["training"]
        share = scoring if name.startswith("on-selected") else 0.0  # the reference was not trained here
        assert r["compute"] == pytest.approx(
            {"training": training, "teacher": 0.0, "shared": share, "total": training + share}
        )
        assert r["lm"]["heldout"]["packed"]["tokens"] > 0
        floor = results[f"unigram ({name.split('.')[0].removeprefix('on-')})"]["lm"]["heldout"]
        assert floor["tokens"] == r["lm"]["heldout"]["tokens"]  # the same targets
        assert floor["packed"]["tokens"] == r["lm"]["heldout"]["packed"]["tokens"]

    table = [line for line in (run_dir / "eval" / "comparison.md").read_text().splitlines() if line.startswith("|")]
    assert table[0].endswith("| heldout packed loss | train FLOPs | total FLOPs | seeds |")
    assert len(table) == 2 + 2 + 2  # two students (two seeds each), a unigram floor per token set
    unigram = results["unigram (random)"]["lm"]["heldout"]
    assert table[5] == (
        f"| unigram (random) | unigram | random | {unigram['loss']:.4f} | "
        f"{unigram['perplexity']:.2f} | {unigram['bits_per_byte']:.4f} | "
        f"{unigram['packed']['loss']:.4f} | - | - | 1 |"
    )
    losses = [results[n]["lm"]["heldout"]["loss"] for n in ("on-selected", "on-selected.seed1")]
    mean, std = np.mean(losses), np.std(losses, ddof=1)
    total = results["on-selected"]["compute"]["total"]
    assert table[2].startswith(f"| on-selected | student | selected | {mean:.4f} ± {std:.4f} |")
    assert table[2].endswith(f"| {total:.2e} | 2 |")  # the format compare.py writes compute in
    page = (run_dir / "report" / "index.html").read_text()
    assert "alt='results against compute'" in page and "share, among the students" in page
    assert "| on-random | student | random |" in stdout


def test_instances_export_as_they_are_and_their_provenance_cites_their_pieces(run):
    """The selected instances written for Megatron, each traced to the document token ranges it
    holds; a token set packed from instance text with another tokenizer is exported with its
    sources left empty, and said so."""
    from miniplm.export import provenance
    from tests.export import readers

    run_dir, stdout, tiny_models = run
    selected = _frame(run_dir / "selected")
    rows = provenance.read(run_dir / "exports" / "instances")
    found = readers.megatron(run_dir / "exports" / "instances", rows)
    assert [s.tolist() for s in found] == selected["input_ids"].to_list()
    tok = load_tokenizer(tiny_models["teacher"])
    docs = dict(_frame(run_dir / "docs" / "main").select("id", "text").iter_rows())
    for row, tokens in zip(rows.to_pylist(), selected["input_ids"].to_list()):
        cited = []
        for doc, start, end in zip(row["source_ids"], row["token_starts"], row["token_ends"]):
            cited += (tok(docs[doc], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[start:end]
        assert cited == tokens
    assert rows["source_ids"].to_pylist() == [[p["id"] for p in held] for held in selected["docs"].to_list()]

    # the instances' rows as the trainer reads them, less their padding, traced like the instances
    rows = provenance.read(run_dir / "exports" / "rows")
    token_rows = TokenRows(run_dir / "tokens" / "selected")
    expected = [[t for t in np.asarray(token_rows[i]).tolist() if t != PAD] for i in range(len(token_rows))]
    assert any(len(r) < token_rows.width for r in expected)  # some were padded
    assert [s.tolist() for s in readers.mds(run_dir / "exports" / "rows", rows)] == expected
    pieces = lambda ids, starts, ends: tuple(zip(ids, starts, ends))  # noqa: E731
    by_pieces = {
        pieces([p["id"] for p in held], [p["start"] for p in held], [p["end"] for p in held]): tokens
        for held, tokens in zip(selected["docs"].to_list(), selected["input_ids"].to_list())
    }
    cited = [pieces(r["source_ids"], r["token_starts"], r["token_ends"]) for r in rows.to_pylist()]
    assert [by_pieces[c] for c in cited] == expected

    other = provenance.read(run_dir / "exports" / "other")
    assert other.num_rows == len(TokenRows(run_dir / "tokens" / "other")) > 0
    assert other["source_ids"].null_count == other.num_rows
    assert f"export other: {other.num_rows:,} sequences have no sources in their provenance" in stdout

"""`miniplm eval` as a stage: every model, held-out loss against a plain computation, the comparison
files, the report's students section, and the split of models over workers."""

import html
import json
import math
import subprocess
import sys

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from miniplm.evaluation import evaluate
from miniplm.job import load_job
from miniplm.models.loading import load_tokenizer
from miniplm.rundir import RunDir
from miniplm.workers import Worker
from tests.evaluation.test_harness import ITEMS, write_task
from tests.evaluation.test_heldout import plain_loss
from tests.pipeline.jobs import tiny_job

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional dependency (pip install '.[eval]')")


@pytest.fixture(scope="module")
def evaluated(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tasks = write_task(root)
    extra = root / "extra.jsonl"
    extra.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x + {i}"}) + "\n" for i in range(12)))
    evaluation = {
        "models": ["students", "teacher", {"name": "other-ref", "model": tiny_models["reference"]}],
        "corpora": [{"path": str(extra), "format": "jsonl", "name": "code"}],
        "tasks": ["tiny_choices"],
        "task_paths": [str(tasks)],
        "batch_size": 4,
    }
    job_file = tiny_job(root, tiny_models, evaluation=evaluation)
    result = subprocess.run(
        [sys.executable, "-m", "miniplm", "run", str(job_file), "-q"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return load_job(job_file), result.stdout


def test_every_model_is_evaluated_and_heldout_loss_is_the_plain_one(evaluated, tiny_models):
    job, stdout = evaluated
    rd = RunDir(job.run_dir)
    results = json.loads((rd.root / "eval" / "results.json").read_text())
    assert list(results) == [
        "on-selected",
        "on-random",
        "teacher",
        "other-ref",
        "unigram (selected)",
        "unigram (random)",
    ]  # a unigram floor per token set the students train on
    assert results["on-selected"]["trained_on"] == "selected" and results["other-ref"]["role"] == "baseline"
    assert results["on-random"]["max_length"] == 32 and results["teacher"]["max_length"] == 1024

    heldout = pl.concat([pl.read_parquet(p) for p in rd.doc_shards("heldout")])["text"].to_list()
    for name, folder, max_length in (
        ("on-selected", rd.root / "models" / "on-selected", 32),
        ("teacher", tiny_models["teacher"], 1024),
    ):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
        expected, count = plain_loss(model, load_tokenizer(str(folder)), heldout, max_length)
        assert results[name]["lm"]["heldout"]["tokens"] == count
        assert results[name]["lm"]["heldout"]["loss"] == pytest.approx(expected, rel=1e-5)
        assert results[name]["lm"]["code"]["documents"] == 12
        task = results[name]["zero_shot"]["tasks"]["tiny_choices"]
        assert task["n"] == len(ITEMS) and 0.0 <= task["value"] <= 1.0

    table = (rd.root / "eval" / "comparison.md").read_text()
    assert table.splitlines()[0].startswith(
        "| model | role | trained on | heldout loss | heldout ppl | heldout bpb | code loss"
    )
    assert "tiny_choices (acc_norm) | average |" in table.splitlines()[0]
    assert len([line for line in table.splitlines() if line.startswith("|")]) == 2 + 4 + 2
    loss = results["on-random"]["lm"]["heldout"]["loss"]
    assert f"| on-random | student | random | {loss:.4f} |" in table
    assert (rd.root / "eval" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "eval: 4 models" in stdout and "| on-selected | student | selected |" in stdout


def test_report_shows_the_students_curves_and_the_comparison(evaluated):
    job, _ = evaluated
    page = (job.run_dir / "report" / "index.html").read_text()
    assert "<h2>Students</h2>" in page and '<table class="comparison">' in page
    assert "<td>on-selected</td><td>student</td><td>selected</td>" in page
    assert "alt='held-out loss curves'" in page and (job.run_dir / "report" / "students.png").exists()
    # the results against compute, twice: the paper's axis (training FLOPs) and the total, each said in words
    text = html.unescape(page.split("alt='results against compute'")[1])
    assert "against training FLOPs" in text and "against total FLOPs" in text
    assert "the paper's axis" in text and "scoring" in text


def test_unigram_rows_are_the_add_one_unigram_of_each_token_set_on_the_students_targets(evaluated):
    """Counted by hand over the token set's rows (PAD is no token), add-one over the tokenizer's vocabulary,
    scored on every token of each held-out document (read after BOS) and on the packed instances."""
    from collections import Counter

    import numpy as np

    from miniplm.corpus.tokens import TokenRows
    from miniplm.scoring.instances import Boundaries, cut_points

    job, stdout = evaluated
    rd = RunDir(job.run_dir)
    results = json.loads((rd.root / "eval" / "results.json").read_text())
    tokenizer = load_tokenizer(str(rd.model("on-random")))
    texts = {
        "heldout": pl.concat([pl.read_parquet(p) for p in rd.doc_shards("heldout")])["text"].to_list(),
        "code": [f"def f{i}(x):\n    return x + {i}" for i in range(12)],
    }
    for token_set, student in (("selected", "on-selected"), ("random", "on-random")):
        rows = TokenRows(rd.tokens(token_set))
        counted = Counter(int(t) for i in range(len(rows)) for t in rows[i] if t != -1)
        total, vocab = sum(counted.values()), len(tokenizer)
        row = results[f"unigram ({token_set})"]
        assert (row["role"], row["trained_on"]) == ("unigram", token_set) and "zero_shot" not in row
        for corpus, docs in texts.items():
            encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in docs]
            stream = [t for ids in encoded for t in ids + [tokenizer.eos_token_id]]
            ends = cut_points(Boundaries.for_tokenizer(tokenizer).mask(np.array(stream)), 32 + 1)
            packed = [t for a, b in zip([0, *ends[:-1]], ends) for t in stream[a + 1 : b]]
            for got, targets in (
                (row["lm"][corpus], [t for ids in encoded for t in ids]),
                (row["lm"][corpus]["packed"], packed),
            ):
                expected = sum(-math.log((counted[t] + 1) / (total + vocab)) for t in targets) / len(targets)
                assert got["loss"] == pytest.approx(expected, rel=1e-9), (token_set, corpus)
                assert got["tokens"] == len(targets)
            # the students are scored on the same targets
            assert row["lm"][corpus]["tokens"] == results[student]["lm"][corpus]["tokens"]
            assert row["lm"][corpus]["packed"]["tokens"] == results[student]["lm"][corpus]["packed"]["tokens"]

    table = (rd.root / "eval" / "comparison.md").read_text()
    loss = results["unigram (random)"]["lm"]["heldout"]["loss"]
    row = next(line for line in table.splitlines() if line.startswith("| unigram (random) |"))
    assert row.startswith(f"| unigram (random) | unigram | random | {loss:.4f} |")
    assert row.endswith("|  |  | - | - |")  # no task accuracy; no model compute
    assert "unigram (selected)" in stdout and "eval: 4 models" in stdout
    page = (job.run_dir / "report" / "index.html").read_text()
    assert "<td>unigram (random)</td><td>unigram</td><td>random</td>" in page
    assert "unigram" in page.split('<table class="comparison">')[1].split("</table>", 1)[1]  # the text says what it is


def test_models_split_over_workers_give_the_same_results(evaluated, tmp_path):
    job, _ = evaluated
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(job.run_dir, copy, ignore=shutil.ignore_patterns("eval"))
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["stages"]["eval"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    job2 = job.model_copy(update={"run_dir": copy})
    assert evaluate.STAGE.run(job2, Worker(1, 2), show_progress=False) is None  # rows 1, 3 and 5 done, 0, 2, 4 left
    assert sorted(p.stem for p in (copy / "eval" / "models").glob("*.json")) == [
        "on-random",
        "other-ref",
        "unigram (random)",
    ]
    counts = evaluate.STAGE.run(job2, Worker(0, 2), show_progress=False)
    assert set(counts) == {
        "on-selected",
        "on-random",
        "teacher",
        "other-ref",
        "unigram (selected)",
        "unigram (random)",
        "flops",
    }

    def without_paths(run):  # the students' folders differ; everything else must not
        results = json.loads((run / "eval" / "results.json").read_text())
        return {name: {k: v for k, v in r.items() if k != "model"} for name, r in results.items()}

    assert without_paths(copy) == without_paths(job.run_dir)


def test_eval_of_an_unknown_student_is_a_config_error(tmp_path, tiny_models):
    from miniplm.config import ConfigError

    job_file = tiny_job(tmp_path, tiny_models, evaluation={"models": ["nobody"], "tasks": []})
    with pytest.raises(ConfigError, match="eval.models: 'nobody' is no student"):
        load_job(job_file)

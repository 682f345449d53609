"""`miniplm eval` as a stage: every model, held-out loss against a plain computation, the comparison
files, the report's students section, and the split of models over workers."""

import json
import subprocess
import sys

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from miniplm.job import load_job
from miniplm.evaluation import evaluate
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
    evaluation = {"models": ["students", "teacher", {"name": "other-ref", "model": tiny_models["reference"]}],
                  "corpora": [{"path": str(extra), "format": "jsonl", "name": "code"}],
                  "tasks": ["tiny_choices"], "task_paths": [str(tasks)], "batch_size": 4}
    job_file = tiny_job(root, tiny_models, evaluation=evaluation)
    result = subprocess.run([sys.executable, "-m", "miniplm", "run", str(job_file), "-q"], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_job(job_file), result.stdout


def test_every_model_is_evaluated_and_heldout_loss_is_the_plain_one(evaluated, tiny_models):
    job, stdout = evaluated
    rd = RunDir(job.run_dir)
    results = json.loads((rd.root / "eval" / "results.json").read_text())
    assert list(results) == ["on-selected", "on-random", "teacher", "other-ref"]
    assert results["on-selected"]["trained_on"] == "selected" and results["other-ref"]["role"] == "baseline"
    assert results["on-random"]["max_length"] == 32 and results["teacher"]["max_length"] == 1024

    heldout = pl.concat([pl.read_parquet(p) for p in rd.doc_shards("heldout")])["text"].to_list()
    for name, folder, max_length in (("on-selected", rd.root / "models" / "on-selected", 32),
                                     ("teacher", tiny_models["teacher"], 1024)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
        expected, count = plain_loss(model, load_tokenizer(str(folder)), heldout, max_length)
        assert results[name]["lm"]["heldout"]["tokens"] == count
        assert results[name]["lm"]["heldout"]["loss"] == pytest.approx(expected, rel=1e-5)
        assert results[name]["lm"]["code"]["documents"] == 12
        task = results[name]["zero_shot"]["tasks"]["tiny_choices"]
        assert task["n"] == len(ITEMS) and 0.0 <= task["value"] <= 1.0

    table = (rd.root / "eval" / "comparison.md").read_text()
    assert table.splitlines()[0].startswith("| model | role | trained on | heldout loss | heldout ppl | heldout bpb | code loss")
    assert "tiny_choices (acc_norm) | average |" in table.splitlines()[0]
    assert len(table.splitlines()) == 2 + 4
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


def test_models_split_over_workers_give_the_same_results(evaluated, tmp_path):
    job, _ = evaluated
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(job.run_dir, copy, ignore=shutil.ignore_patterns("eval"))
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["stages"]["eval"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    job2 = job.model_copy(update={"run_dir": copy})
    assert evaluate.STAGE.run(job2, Worker(1, 2), show_progress=False) is None  # models 1 and 3 done, 0 and 2 left
    assert sorted(p.stem for p in (copy / "eval" / "models").glob("*.json")) == ["on-random", "other-ref"]
    counts = evaluate.STAGE.run(job2, Worker(0, 2), show_progress=False)
    assert set(counts) == {"on-selected", "on-random", "teacher", "other-ref", "flops"}
    def without_paths(run):  # the students' folders differ; everything else must not
        results = json.loads((run / "eval" / "results.json").read_text())
        return {name: {k: v for k, v in r.items() if k != "model"} for name, r in results.items()}

    assert without_paths(copy) == without_paths(job.run_dir)


def test_eval_of_an_unknown_student_is_a_config_error(tmp_path, tiny_models):
    from miniplm.config import ConfigError

    job_file = tiny_job(tmp_path, tiny_models, evaluation={"models": ["nobody"], "tasks": []})
    with pytest.raises(ConfigError, match="eval.models: 'nobody' is no student"):
        load_job(job_file)

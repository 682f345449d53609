"""`miniplm run`: the whole pipeline in one process; killed anywhere and run again, it ends
with the outputs of an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline.jobs import data_outputs, tiny_job


def _run(job: Path, run_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "miniplm", "run", str(job), f"run_dir={run_dir}", "-q"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _final(run_dir: Path) -> dict:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    return {name: stages[f"train/{name}"]["counts"] for name in ("reference", "on-selected", "on-random")}


@pytest.fixture(scope="module")
def job_file(tiny_models, tmp_path_factory):
    return tiny_job(tmp_path_factory.mktemp("local"), tiny_models, train_reference=True)


@pytest.fixture(scope="module")
def uninterrupted(job_file):
    run_dir = job_file.parent / "clean"
    start = time.monotonic()
    result = _run(job_file, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result.stdout, time.monotonic() - start


def test_run_goes_through_every_stage_and_prints_the_comparison(uninterrupted, job_file):
    run_dir, stdout, _ = uninterrupted
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    expected = [
        "prepare",
        "tokenize/reference",
        "train/reference",
        "score",
        "rank",
        "select",
        "tokenize/selected",
        "tokenize/random",
        "tokenize/heldout",
        "train/on-selected",
        "train/on-random",
    ]
    assert list(stages) == expected and all(stages[s]["state"] == "done" for s in expected)
    assert (run_dir / "report" / "index.html").exists()
    assert (run_dir / "models" / "on-random" / "config.json").exists()
    losses = {name: counts["heldout_loss"] for name, counts in _final(run_dir).items() if name != "reference"}
    assert "held-out loss per token" in stdout
    for name, loss in losses.items():
        assert f"{name:<24} {loss:.4f}" in stdout
    assert stdout.rstrip().endswith(f"report: {run_dir}/report/index.html")

    # selected and random baseline: about the same tokens, different documents
    select = stages["select"]["counts"]
    assert 0 < select["random_baseline"]["tokens"] <= select["doc_tokens_kept"]
    assert select["random_baseline"]["tokens"] > 0.6 * select["doc_tokens_kept"]

    # status reads the same run directory: every step done, no SLURM jobs
    status = subprocess.run(
        [sys.executable, "-m", "miniplm", "status", str(job_file), f"run_dir={run_dir}"], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stdout + status.stderr
    table = status.stdout.splitlines()[2:]
    assert [line.split()[:2] for line in table] == [
        ["prepare", "done"],
        ["train-reference", "done"],
        ["score", "done"],
        ["rank", "done"],
        ["select", "done"],
        ["tokenize/selected", "done"],
        ["tokenize/random", "done"],
        ["tokenize/heldout", "done"],
        ["train/on-selected", "done"],
        ["train/on-random", "done"],
    ]
    assert table[0].split()[2:] == ["3/3", "units", "-"] and table[1].split()[2:] == ["step", "4", "-"]

    # a second run finds everything done: it reports the same and changes nothing
    again = _run(job_file, run_dir)
    assert again.returncode == 0
    assert json.loads((run_dir / "manifest.json").read_text())["stages"] == stages
    for name, loss in losses.items():
        assert f"{name:<24} {loss:.4f}" in again.stdout


def test_killed_at_random_points_then_rerun_equals_uninterrupted(uninterrupted, job_file):
    clean_dir, _, duration = uninterrupted
    seed = int(os.environ.get("MINIPLM_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    run_dir = job_file.parent / "killed"
    kills = []
    for _ in range(2):
        delay = rng.uniform(0.05, 0.9) * duration
        proc = subprocess.Popen(
            [sys.executable, "-m", "miniplm", "run", str(job_file), f"run_dir={run_dir}", "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            state = (
                json.loads((run_dir / "manifest.json").read_text())["stages"]
                if (run_dir / "manifest.json").exists()
                else {}
            )
            kills.append((round(delay, 1), [s for s, v in state.items() if v.get("state") != "done"]))
    result = _run(job_file, run_dir)
    assert result.returncode == 0, f"seed {seed}, kills {kills}: {result.stderr[-3000:]}"
    print(f"seed {seed}: killed at (seconds, unfinished stages) {kills}")

    assert data_outputs(run_dir) == data_outputs(clean_dir) != {}
    assert (run_dir / "selected-random").exists()
    clean, resumed = _final(clean_dir), _final(run_dir)
    for name in clean:
        assert resumed[name]["step"] == clean[name]["step"]
        assert resumed[name]["loss"] == pytest.approx(clean[name]["loss"], abs=1e-5), (seed, kills, name)
        if name != "reference":
            assert resumed[name]["heldout_loss"] == pytest.approx(clean[name]["heldout_loss"], abs=1e-5)
    assert yaml.safe_load((run_dir / "job.yaml").read_text())["run_dir"] == str(run_dir)

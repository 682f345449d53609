"""`miniplm slurm` and `miniplm status` on a real single-node SLURM cluster (slurmctld, slurmd and
munge from Debian's packages, started by the `slurm_cluster` fixture, or skipped with the reason)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.jobs import data_outputs, tiny_job

SLURM = {
    "defaults": {"cpus": 1, "time": "00:30:00"},
    "stages": {
        "score": {"max_tasks": 8, "parallel": 2},
        "rank": {"max_tasks": 2},
        "select": {"max_tasks": 2},
        "tokenize": {"max_tasks": 2},
    },
}


def _miniplm(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # what the array tasks get with cpus: 1: the same float sums
    result = subprocess.run(
        [sys.executable, "-m", "miniplm", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _wait_for_queue(run_dir: Path, timeout: float = 600) -> None:
    """Until no job this run submitted is pending or running."""
    ids = {json.loads(line)["job_id"] for line in (run_dir / "slurm" / "submissions.jsonl").read_text().splitlines()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True).stdout.split()
        if not ids & set(queue):
            return
        time.sleep(1)
    raise AssertionError(f"jobs {sorted(ids)} still queued after {timeout} s")


@pytest.fixture(scope="module")
def job_file(tiny_models, tmp_path_factory):
    return tiny_job(
        tmp_path_factory.mktemp("slurm"), tiny_models, evaluation={"models": ["students"], "tasks": []}, **SLURM
    )


@pytest.fixture(scope="module")
def local_run(job_file):
    run_dir = job_file.parent / "local"
    _miniplm("run", job_file, f"run_dir={run_dir}", "-q", cwd=job_file.parent)
    return run_dir


def test_slurm_chain_writes_what_a_local_run_writes(slurm_cluster, job_file, local_run):
    run_dir = job_file.parent / "on-slurm"
    submitted = _miniplm("slurm", job_file, f"run_dir={run_dir}", cwd=job_file.parent)
    assert re.search(
        r"score +array 8 of 8 tasks \(shard count not known until prepare is done\): job \d+", submitted.stdout
    ), submitted.stdout
    scripts = sorted(p.name for p in (run_dir / "slurm").glob("*.sbatch"))
    assert scripts == [
        "eval.sbatch",
        "prepare.sbatch",
        "rank.sbatch",
        "score.sbatch",
        "select.sbatch",
        "tokenize-heldout.sbatch",
        "tokenize-random.sbatch",
        "tokenize-selected.sbatch",
        "train-on-random.sbatch",
        "train-on-selected.sbatch",
    ]
    snapshots = list((run_dir / "slurm").glob("job-*.yaml"))
    assert (
        len(snapshots) == 1 and f"-m miniplm score {snapshots[0]} " in (run_dir / "slurm" / "score.sbatch").read_text()
    )
    _wait_for_queue(run_dir)

    status = _miniplm("status", job_file, f"run_dir={run_dir}", cwd=job_file.parent, check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    for step in (
        "prepare",
        "score",
        "rank",
        "select",
        "tokenize/selected",
        "tokenize/random",
        "tokenize/heldout",
        "train/on-selected",
        "train/on-random",
        "eval",
    ):
        assert re.search(rf"^{re.escape(step)} +done ", status.stdout, flags=re.M), status.stdout
    assert re.search(r"^score +done +\d+/\d+ shards +job \d+: 8 completed", status.stdout, flags=re.M), status.stdout
    # the selection as array work: rank's tasks sort runs, select's decide their own shards after the cut
    assert re.search(r"^rank +done +1/1 runs +job \d+: 2 completed", status.stdout, flags=re.M), status.stdout
    assert re.search(r"^select +done +\d+/\d+ shards +job \d+: 2 completed", status.stdout, flags=re.M), status.stdout

    assert sorted((run_dir / "selected").glob("*.parquet"))
    assert data_outputs(run_dir) == data_outputs(local_run)
    ours = json.loads((run_dir / "eval" / "results.json").read_text())
    local = json.loads((local_run / "eval" / "results.json").read_text())
    for student in ("on-selected", "on-random"):
        assert (run_dir / "models" / student / "model.safetensors").exists()
        assert ours[student]["lm"]["heldout"]["tokens"] == local[student]["lm"]["heldout"]["tokens"]
        # the same data; training under torchrun and in-process need not agree to the last bit
        assert ours[student]["lm"]["heldout"]["loss"] == pytest.approx(
            local[student]["lm"]["heldout"]["loss"], rel=1e-3
        )
        assert list((run_dir / "logs").glob(f"train-{student}-*.log"))

    again = _miniplm("slurm", job_file, f"run_dir={run_dir}", cwd=job_file.parent)
    assert "submitted" in again.stdout and "job " not in again.stdout.split("submitted", 1)[1].split("follow")[0]


def test_failed_array_task_is_reported_and_only_its_shard_resubmitted(slurm_cluster, job_file, local_run):
    cwd = job_file.parent
    run_dir = cwd / "with-failure"
    _miniplm("prepare", job_file, f"run_dir={run_dir}", "-q", cwd=cwd)
    n_shards = len(list((run_dir / "docs" / "main").glob("*.parquet")))
    assert n_shards >= 3
    # score's task 1 (it owns shard 1) fails on a file where that shard keeps its resume points (a
    # damaged document shard would stop every task: each checks what it reads before starting)
    blocker = run_dir / "work" / "score" / "shard-00001"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")

    _miniplm("slurm", job_file, f"run_dir={run_dir}", cwd=cwd)
    _wait_for_queue(run_dir)
    status = _miniplm("status", job_file, f"run_dir={run_dir}", cwd=cwd, check=False)
    assert status.returncode == 1, status.stdout
    failed = re.search(r"^  score task 1 \(job (\d+)_1\): exit code 1\n    log: (\S+)$", status.stdout, flags=re.M)
    assert failed, status.stdout
    log = Path(failed.group(2))
    assert log == run_dir.absolute() / "logs" / f"score-{failed.group(1)}_1.log" and log.exists()
    assert "work/score/shard-00001" in log.read_text()
    assert re.search(
        rf"^score +\w+ +{n_shards - 1}/{n_shards} shards +job \d+: {n_shards - 1} completed, 1 failed",
        status.stdout,
        flags=re.M,
    ), status.stdout
    assert re.search(r"^select +waiting .* not run", status.stdout, flags=re.M), status.stdout

    blocker.unlink()
    again = _miniplm("slurm", job_file, f"run_dir={run_dir}", cwd=cwd)
    assert re.search(rf"score +array 1 of {n_shards} tasks \(1 of {n_shards} shards to do\): job \d+", again.stdout)
    assert "#SBATCH --array=1%2\n" in (run_dir / "slurm" / "score.sbatch").read_text()
    assert re.search(r"prepare +finished", again.stdout)
    _wait_for_queue(run_dir)

    status = _miniplm("status", job_file, f"run_dir={run_dir}", cwd=cwd, check=False)
    assert status.returncode == 0, status.stdout
    assert re.search(
        rf"^score +done +{n_shards}/{n_shards} shards +job \d+: {n_shards - 1} completed; job \d+: "
        r"1 completed",
        status.stdout,
        flags=re.M,
    ), status.stdout
    assert data_outputs(run_dir) == data_outputs(local_run)

"""The array script `miniplm slurm` renders, run task by task with SLURM's variables set by hand."""

import os
import subprocess
import sys

from miniplm.job import load_job
from miniplm.pipeline.plan import step_named
from miniplm.pipeline.slurm import render
from miniplm.rundir import RunDir
from tests.conftest import write_jsonl


def test_prepare_array_tasks_in_any_order_equal_one_run(write_job, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in range(5):
        write_jsonl(src / f"{f}.jsonl", [{"text": f"file {f} doc {i}"} for i in range(40)])
    inputs = [{"path": str(src / "*.jsonl"), "format": "jsonl"}]
    single = write_job(inputs, name="single.yaml", run_dir=tmp_path / "single", docs_per_shard=30)
    subprocess.run([sys.executable, "-m", "miniplm", "prepare", str(single), "-q"], check=True, capture_output=True)

    path = write_job(inputs, name="array.yaml", run_dir=tmp_path / "array", docs_per_shard=30)
    job = load_job(path)
    script = tmp_path / "prepare.sbatch"
    script.write_text(render(job, RunDir(job.run_dir), step_named(job, "prepare"), path, [0, 1, 2], 3))
    for task in (2, 0, 1):  # any order; the last to finish writes the shards
        env = {**os.environ, "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": str(task), "SLURM_CPUS_PER_TASK": "1"}
        result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "array" / "slurm" / "exit" / f"prepare-40_{task}").read_text() == "0\n"

    def shards(run):
        return {p.relative_to(run): p.read_bytes() for p in sorted((run / "docs").rglob("*.parquet"))}

    assert shards(tmp_path / "array") == shards(tmp_path / "single") != {}


def test_a_failing_task_records_its_exit_code(write_job, tmp_path):
    path = write_job(
        [{"path": str(write_jsonl(tmp_path / "a.jsonl", [b"{broken\n"])), "format": "jsonl"}], on_error="fail"
    )
    job = load_job(path)
    script = tmp_path / "prepare.sbatch"
    script.write_text(render(job, RunDir(job.run_dir), step_named(job, "prepare"), path, [0], 1))
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "0"}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "a.jsonl:1" in result.stderr
    assert (tmp_path / "run" / "slurm" / "exit" / "prepare-41_0").read_text() == "1\n"

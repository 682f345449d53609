"""The sbatch templates run as array tasks (SLURM's variables set by hand here)."""

import os
import subprocess

from tests.conftest import REPO, write_jsonl


def test_prepare_array_tasks_together_equal_one_run(write_job, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in range(5):
        write_jsonl(src / f"{f}.jsonl", [{"text": f"file {f} doc {i}"} for i in range(40)])
    inputs = [{"path": str(src / "*.jsonl"), "format": "jsonl"}]
    single = write_job(inputs, name="single.yaml", run_dir=tmp_path / "single", docs_per_shard=30)
    subprocess.run(["miniplm", "prepare", str(single), "-q"], check=True, capture_output=True)

    array = write_job(inputs, name="array.yaml", run_dir=tmp_path / "array", docs_per_shard=30)
    for task in (2, 0, 1):  # any order; the last to finish writes the shards
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3",
               "SLURM_ARRAY_TASK_MIN": "0", "SLURM_CPUS_PER_TASK": "1"}
        subprocess.run(["bash", str(REPO / "slurm" / "prepare.sbatch"), str(array)], env=env, check=True,
                       capture_output=True)

    def shards(run):
        return {p.relative_to(run): p.read_bytes() for p in sorted((run / "docs").rglob("*.parquet"))}

    assert shards(tmp_path / "array") == shards(tmp_path / "single") != {}

"""A launcher written here alone, against the launcher interface: each task a plain subprocess.
Resubmission planning and `miniplm status` work with it unchanged."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from miniplm.cli import main
from miniplm.job import load_job
from miniplm.pipeline import launchers
from miniplm.pipeline.launcher import Launcher, Record
from miniplm.pipeline.submissions import plan_submissions
from miniplm.rundir import RunDir
from tests.pipeline.jobs import data_outputs, tiny_job


class SubprocessLauncher(Launcher):
    """Runs a step's tasks one after another as `python -m miniplm ...` subprocesses. A step whose
    task failed stops the chain: what waits for it is recorded but never started."""

    name = "subprocess"

    def _dir(self, rd: RunDir) -> Path:
        return rd.launcher(self.name)

    def records(self, rd):
        path = self._dir(rd) / "submissions.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [Record(**json.loads(line)) for line in lines]

    def queued(self, rd, records):
        return {}  # submit returns when every task has ended

    def exit_code(self, rd, step, job_id, task):
        path = self._dir(rd) / "exit" / f"{job_id}_{task}"
        return int(path.read_text()) if path.exists() else None

    def log(self, rd, step, job_id, task):
        return self._dir(rd) / "logs" / f"{job_id}_{task}.log"

    def max_tasks(self, job, step):
        return 3

    def prepare(self, job, rd, sub, job_file):
        sub.text = str(job_file)

    def submit(self, job, rd, plan):
        failed = set()
        ids = {}
        for sub in plan:
            if sub.action != "submit":
                continue
            sub.job_id = f"{len(self.records(rd)) + 1:03d}"
            ids[f"<{sub.step.name}>"] = sub.job_id
            tasks = sub.tasks if sub.step.kind == "array" else [None]
            record = Record(sub.step.name, sub.job_id, sub.tasks if sub.step.kind == "array" else None, sub.num_workers)
            (self._dir(rd) / "exit").mkdir(parents=True, exist_ok=True)
            (self._dir(rd) / "logs").mkdir(exist_ok=True)
            with open(self._dir(rd) / "submissions.jsonl", "a") as f:
                f.write(json.dumps(record.__dict__) + "\n")
            if any(ids.get(a, a) in failed for a in sub.after):
                failed.add(sub.job_id)  # its dependency failed: it never runs
                continue
            for task in tasks:
                command = [sys.executable, "-m", "miniplm", sub.step.stage, sub.text, "-q"]
                command += ["--worker", str(task), "--num-workers", str(sub.num_workers)] if task is not None else []
                command += ["--only", sub.step.only] if sub.step.only else []
                with open(self.log(rd, sub.step, sub.job_id, task), "w") as log:
                    code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
                (self._dir(rd) / "exit" / f"{sub.job_id}_{task}").write_text(str(code))
                if code:
                    failed.add(sub.job_id)


@pytest.fixture
def launcher():
    yield launchers.register(SubprocessLauncher())
    launchers.unregister("subprocess")


def test_status_and_resubmission_through_a_new_launcher(launcher, tiny_models, tmp_path, capsys):
    job_file = tiny_job(tmp_path, tiny_models)
    job_file.write_text(job_file.read_text().split("tokenize:")[0])  # prepare, score and select
    assert main(["run", str(job_file), "-q", f"run_dir={tmp_path / 'local'}"]) == 0
    job = load_job(job_file)
    rd = RunDir(job.run_dir)

    first = plan_submissions(job, rd, launcher, job_file)
    assert [(s.step.name, s.action, s.tasks) for s in first] == [
        ("prepare", "submit", [0, 1, 2]),
        ("score", "submit", [0, 1, 2]),
        ("rank", "submit", [0, 1, 2]),
        ("select", "submit", [0, 1, 2]),
    ]
    assert first[1].after == ["<prepare>"] and first[2].after == ["<score>"]
    assert first[3].after == ["<rank>"]  # and through it score, whose scores select reads too
    launcher.submit(job, rd, first[:1])
    # a failure of task 1 alone: a file where its shard keeps its resume points (a damaged input
    # shard would stop every task, which all check what they read before starting)
    blocker = rd.work("score") / "shard-00001"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")

    again = plan_submissions(job, rd, launcher, job_file)
    assert [(s.step.name, s.action) for s in again] == [
        ("prepare", "done"),
        ("score", "submit"),
        ("rank", "submit"),
        ("select", "submit"),
    ]
    launcher.submit(job, rd, again)
    capsys.readouterr()
    assert main(["status", str(job_file)]) == 1
    out = capsys.readouterr().out
    score_job, select_job = again[1].job_id, again[3].job_id
    assert f"score task 1 (job {score_job}_1): exit code 1" in out
    assert "File exists: " in out and "work/score/shard-00001" in out  # the log's last line
    shards = len(rd.doc_shards("main"))  # select writes one selected shard per main-split document shard
    assert re.search(rf"^select +waiting +0/{shards} shards +job {select_job}: 3 not run$", out, flags=re.M), out

    blocker.unlink()
    third = plan_submissions(job, rd, launcher, job_file)
    assert [(s.step.name, s.action, s.tasks) for s in third] == [
        ("prepare", "done", []),
        ("score", "submit", [1]),
        ("rank", "submit", [0, 1, 2]),
        ("select", "submit", [0, 1, 2]),
    ]
    launcher.submit(job, rd, third)
    assert main(["status", str(job_file)]) == 0
    out = capsys.readouterr().out
    assert "failed" not in out and f"job {third[1].job_id}: 1 completed" in out
    assert data_outputs(rd.root) == data_outputs(tmp_path / "local") != {}

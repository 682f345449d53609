"""A run directory used by two processes at once, or with files a user (or someone else) put in it:
two processes on one teacher-logits set, two trainings of one student, a user's file in a model
folder that training or pruning replaces, and a checkpoint file that is not DeepSpeed's state."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
import yaml

from miniplm.corpus.tokens import row_blocks
from tests.training.runs import copy_run, kill_when, miniplm, tokenized_run

TARGET = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 1,
}


def _student(name: str, steps: int, **extra) -> dict:
    return {
        "name": name,
        "preset": "tiny",
        "tokens": "main",
        "steps": steps,
        "batch_tokens": 256,
        "micro_batch": 4,
        "warmup_steps": 1,
        "checkpoint_every": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def tokenized(tiny_models, tmp_path_factory):
    return tokenized_run(
        tmp_path_factory.mktemp("shared"),
        tiny_models["teacher"],
        {
            "teacher_logits": [{"name": "t", "tokens": "main", "top_k": 8, "batch_tokens": 64, "checkpoint_every": 1}],
            "prune": [{"name": "cut", "calibration": {"split": "main", "docs": 8, "max_length": 32}, "target": TARGET}],
            "students": [_student("s", 3), _student("long", 60)],
        },
    )


def _run_dir(path: Path) -> Path:
    return Path(yaml.safe_load(path.read_text())["run_dir"])


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "miniplm", *args, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_shard_is_written_from_what_its_process_computed(tokenized):
    """Another process removing the shard's scratch folder midway (as a second process on the set
    does when it finishes or is forced) leaves either every row written or an error, never a stage
    done with rows missing."""
    path = copy_run(tokenized, "logits-scratch")
    run_dir = _run_dir(path)
    scratch = run_dir / "work" / "teacher-logits" / "t" / "shard-00000"
    proc = _start("teacher-logits", str(path))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(scratch.glob("batches-*"))) < 2:
        time.sleep(0.005)
    # As the stage's own clean-up does: a file renamed away mid-walk is not an error.
    shutil.rmtree(scratch, ignore_errors=True)
    rc, stderr = proc.wait(timeout=600), proc.stderr.read()
    stage = json.loads((run_dir / "manifest.json").read_text())["stages"]["teacher-logits/t"]
    if rc:
        assert stage["state"] == "failed" and "shard-00000" in stderr, stderr[-3000:]
        return
    assert stage["state"] == "done"
    for token_file in sorted((run_dir / "tokens" / "main").glob("shard-*.arrow")):
        logits = run_dir / "teacher-logits" / "t" / token_file.name
        written = ipc.open_file(pa.memory_map(str(logits))).read_all().num_rows
        assert written == sum(len(b) for b in row_blocks(token_file)) > 0, logits.name


def test_a_second_training_of_one_student_is_refused_naming_the_first(tokenized):
    path = copy_run(tokenized, "train-twice")
    log = _run_dir(path) / "train" / "long" / "metrics.jsonl"
    first = _start("train", str(path), "--only", "long")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None and not log.exists():
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-3000:]
        second = miniplm("train", str(path), "--only", "long", timeout=300)
        assert first.poll() is None, "the first training ended before the second one started"
        assert second.returncode != 0
        assert f"pid {first.pid}" in second.stderr and "train/long" in second.stderr, second.stderr[-3000:]
    finally:
        first.kill()
        first.wait()
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_training_and_pruning_again_keep_the_users_files_in_the_model_folder(tokenized):
    path = copy_run(tokenized, "user-files")
    for stage, name in (("train", "s"), ("prune", "cut")):
        result = miniplm(stage, str(path), "--only", name)
        assert result.returncode == 0, result.stderr[-3000:]
        notes = _run_dir(path) / "models" / name / "NOTES.md"
        notes.write_text("my notes\n")
        result = miniplm(stage, str(path), "--only", name, "--force")
        assert result.returncode == 0, result.stderr[-3000:]
        assert notes.read_text() == "my notes\n", f"{stage} --force deleted a file it did not write"
        assert (notes.parent / "config.json").exists()


class _Planted:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_file_that_runs_code_is_refused_on_resume(tokenized):
    path = copy_run(tokenized, "planted")
    work = _run_dir(path) / "train" / "long"
    log = work / "metrics.jsonl"
    kill_when(["train", str(path), "--only", "long"], lambda: log.exists() and len(log.read_text().splitlines()) >= 2)
    tag = (work / "checkpoints" / "latest").read_text().strip()
    target = work / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    assert target.exists()
    marker = path.with_name("planted-ran")
    torch.save({"module": _Planted(marker)}, target)
    result = miniplm("train", str(path), "--only", "long", timeout=300)
    assert not marker.exists(), "resuming ran code from a checkpoint file"
    assert result.returncode != 0
    assert str(target) in result.stderr, result.stderr[-3000:]


def test_a_held_lock_is_refused_naming_its_holder_and_free_once_released(tmp_path):
    from miniplm.files import LockHeld, held_lock

    path = tmp_path / ".s.lock"
    with held_lock(path):
        with pytest.raises(LockHeld, match=f"pid {os.getpid()} on "):
            with held_lock(path):
                pass
    with held_lock(path):
        pass

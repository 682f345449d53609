"""Run directories for the training tests: a small prepared and tokenized corpus to copy, the CLI in a
subprocess, a run killed with SIGKILL once a file shows it got far enough, and metrics as read back."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from tests.conftest import write_jsonl


def tokenized_run(root: Path, teacher: str, job: dict) -> tuple[Path, dict]:
    """Prepare and tokenize a small corpus under root/base (token sets 'main' and 'held' of 64 tokens,
    the teacher's tokenizer); the job (`job` merged in) to copy with `copy_run`."""
    rng = np.random.default_rng(0)
    words = "the god created heaven earth def return print import path numbers fox dog".split()
    write_jsonl(
        root / "docs.jsonl", [{"text": " ".join(rng.choice(words, size=rng.integers(5, 60)))} for _ in range(120)]
    )
    job = {
        "run_dir": str(root / "base"),
        "seed": 1,
        "corpus": {
            "inputs": [{"path": str(root / "docs.jsonl"), "format": "jsonl"}],
            "docs_per_shard": 50,
            "reference_fraction": 0.0,
            "heldout_fraction": 0.15,
        },
        "teacher": {"model": teacher},
        "tokenize": [
            {"name": "main", "input": "main", "seq_len": 64},
            {"name": "held", "input": "heldout", "seq_len": 64},
        ],
        **job,
    }
    (root / "base.yaml").write_text(yaml.safe_dump(job))
    for stage in ("prepare", "tokenize"):
        subprocess.run(
            [sys.executable, "-m", "miniplm", stage, str(root / "base.yaml"), "-q"], check=True, capture_output=True
        )
    return root, job


def copy_run(tokenized: tuple[Path, dict], name: str, **changes) -> Path:
    """A copy of the tokenized run directory with its own job file (top-level keys changed); its path."""
    root, job = tokenized
    shutil.copytree(root / "base", root / name)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**job, "run_dir": str(root / name), **changes}))
    return path


def miniplm(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "miniplm", *args, "-q"], capture_output=True, text=True, timeout=timeout
    )


def kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start `miniplm ARGS` and SIGKILL it as soon as `ready()` holds (or it ends by itself)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "miniplm", *args, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def metrics(job_path: Path, student: str) -> dict[int, dict]:
    """A student's metrics.jsonl, by step."""
    run_dir = Path(yaml.safe_load(job_path.read_text())["run_dir"])
    lines = [json.loads(line) for line in (run_dir / "train" / student / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m for m in lines}

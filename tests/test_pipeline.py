"""The stages chained through the command line on a tiny job: prepare, train the reference
here, score, select, tokenize the selection, train a student on it."""

import json
import math
import subprocess
import sys

import numpy as np
import polars as pl
import yaml

from tests.conftest import write_jsonl


def test_stages_chain_from_raw_text_to_a_trained_student(tiny_models, tmp_path):
    rng = np.random.default_rng(4)
    words = "the god created heaven earth def return print import path numbers fox dog".split()
    write_jsonl(
        tmp_path / "docs.jsonl", [{"text": " ".join(rng.choice(words, size=rng.integers(3, 50)))} for _ in range(160)]
    )
    job = {
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "corpus": {
            "inputs": [{"path": str(tmp_path / "docs.jsonl"), "format": "jsonl"}],
            "docs_per_shard": 40,
            "reference_fraction": 0.3,
            "heldout_fraction": 0.1,
        },
        "teacher": {"model": tiny_models["teacher"]},
        "reference": {
            "train": {
                "preset": "tiny",
                "seq_len": 32,
                "steps": 4,
                "batch_tokens": 256,
                "micro_batch": 4,
                "warmup_steps": 1,
            }
        },
        "score": {"max_length": 64, "batch_tokens": 512},
        "select": {"keep_fraction": 0.5},
        "tokenize": [
            {"name": "selected", "input": "selected", "seq_len": 32},
            {"name": "heldout", "input": "heldout", "seq_len": 32},
        ],
        "students": [
            {
                "name": "student",
                "preset": "tiny",
                "tokens": "selected",
                "heldout": "heldout",
                "steps": 3,
                "batch_tokens": 128,
                "micro_batch": 4,
                "warmup_steps": 1,
            }
        ],
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    for stage in ("prepare", "train-reference", "score", "rank", "select", "tokenize", "train"):
        result = subprocess.run(
            [sys.executable, "-m", "miniplm", stage, str(path), "-q"], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{stage}: {result.stderr[-2000:]}"

    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    assert {k for k, v in manifest.items() if v["state"] == "done"} == {
        "prepare",
        "tokenize/reference",
        "train/reference",
        "score",
        "rank",
        "select",
        "tokenize/selected",
        "tokenize/heldout",
        "train/student",
    }
    assert (run / "models" / "reference" / "model.safetensors").exists()
    scores = pl.read_parquet(str(run / "scores" / "*.parquet"))
    assert scores.height == manifest["prepare"]["counts"]["kept"]["main"]
    assert (scores["teacher_logprob"] != scores["reference_logprob"]).all()
    selected = pl.read_parquet(str(run / "selected" / "*.parquet"))
    assert selected.height == manifest["select"]["counts"]["kept"] == math.floor(scores.height * 0.5 + 0.5)
    assert (run / "report" / "index.html").exists()
    assert (run / "models" / "student" / "config.json").exists()
    assert manifest["train/student"]["counts"]["heldout_loss"] > 0

"""A tiny job that runs every stage in seconds: the shared tiny models, a few small JSONL files."""

from pathlib import Path

import yaml

from tests.conftest import TRAINING_TEXT, write_jsonl


def write_corpus(folder: Path, files: int = 3, docs: int = 40) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        rows = [
            {"text": f"{TRAINING_TEXT[(f + i) % len(TRAINING_TEXT)]} {i} " * (1 + (i * 7 + f) % 5)} for i in range(docs)
        ]
        write_jsonl(folder / f"part-{f}.jsonl", rows)
    return str(folder / "*.jsonl")


def tiny_job(
    tmp_path: Path, tiny_models: dict, *, train_reference: bool = False, evaluation: dict | None = None, **slurm
) -> Path:
    """A job file for the whole pipeline with tiny models; run_dir tmp_path/run."""
    reference = (
        {
            "train": {
                "preset": "tiny",
                "seq_len": 32,
                "steps": 4,
                "batch_tokens": 128,
                "micro_batch": 4,
                "warmup_steps": 1,
                "checkpoint_every": 2,
            }
        }
        if train_reference
        else {"model": tiny_models["reference"]}
    )
    student = {
        "preset": "tiny",
        "heldout": "heldout",
        "steps": 6,
        "batch_tokens": 128,
        "micro_batch": 4,
        "warmup_steps": 1,
        "eval_every": 3,
        "eval_rows": 16,
        "checkpoint_every": 2,
    }
    job = {
        "run_dir": str(tmp_path / "run"),
        "seed": 3,
        "corpus": {
            "inputs": [{"path": write_corpus(tmp_path / "corpus"), "format": "jsonl"}],
            "docs_per_shard": 20,  # three or four main-split shards of the ~77 documents dedup leaves
            "reference_fraction": 0.2,
            "heldout_fraction": 0.1,
        },
        "teacher": {"model": tiny_models["teacher"]},
        "reference": reference,
        "score": {"max_length": 32, "batch_tokens": 256, "checkpoint_every": 1},
        "select": {"keep_fraction": 0.5, "random_baseline": True, "report_examples": 2},
        "tokenize": [
            {"name": "selected", "input": "selected", "seq_len": 32},
            {"name": "random", "input": "selected-random", "seq_len": 32},
            {"name": "heldout", "input": "heldout", "seq_len": 32},
        ],
        "students": [
            {"name": "on-selected", "tokens": "selected", **student},
            {"name": "on-random", "tokens": "random", **student},
        ],
        "slurm": slurm,
    }
    if evaluation is not None:
        job["eval"] = evaluation
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def data_outputs(run_dir: Path) -> dict[str, bytes]:
    """Every document, score, selection and token file of a run, by relative path."""
    out = {}
    for folder in ("docs", "scores", "selected", "selected-random", "selection", "tokens"):
        for p in sorted((run_dir / folder).rglob("*")):
            if p.is_file() and p.suffix in (".parquet", ".arrow"):
                out[str(p.relative_to(run_dir))] = p.read_bytes()
    return out

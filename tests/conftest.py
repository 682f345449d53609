import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def write_job(tmp_path):
    """Write a job file under tmp_path and return its path; `inputs` and corpus keys as given."""

    def write(inputs, name="job.yaml", run_dir=None, seed=0, **corpus):
        job = {
            "run_dir": str(run_dir or tmp_path / "run"),
            "seed": seed,
            "corpus": {"inputs": inputs, **corpus},
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(job, sort_keys=False))
        return path

    return write


def write_jsonl(path: Path, rows) -> Path:
    """rows: dicts (dumped as JSON) or raw bytes lines (written as they are)."""
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n")
    return path

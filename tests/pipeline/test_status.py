"""`miniplm status`: a finished step whose outputs changed since is damaged, one made from something
that changed since is stale; either makes it exit non-zero."""

import re
from pathlib import Path

from miniplm.cli import main
from tests.conftest import write_jsonl
from tests.selection.test_select import make_scored_run, run_select

# hub ids that status never loads, so that the job has a score step
MODELS = ["teacher.model=org/t", "reference.model=org/r"]


def _status(tmp_path: Path, capsys) -> tuple[int, str]:
    code = main(["status", str(tmp_path / "run.yaml"), *MODELS])
    return code, capsys.readouterr().out


def test_a_shard_changed_in_place_to_the_same_size_is_damaged(tmp_path, capsys):
    job = make_scored_run(tmp_path)
    assert _status(tmp_path, capsys)[0] == 0
    shard = Path(job.run_dir) / "scores" / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, out = _status(tmp_path, capsys)
    assert code == 1 and re.search(r"^score +damaged", out, re.M)
    assert "score: damaged: " in out and "shard-00001.parquet: its content changed since score wrote it" in out


def test_a_step_made_from_a_file_changed_since_is_stale_and_so_is_every_step_after_it(tmp_path, capsys):
    job = make_scored_run(tmp_path)
    run_select(job, show_progress=False)
    assert _status(tmp_path, capsys)[0] == 0
    write_jsonl(tmp_path / "docs.jsonl", [{"id": "doc-000", "text": "another corpus", "src": "web"}])
    code, out = _status(tmp_path, capsys)
    assert code == 1
    assert re.search(r"^prepare +stale", out, re.M) and re.search(r"^select +stale", out, re.M)
    assert (
        "prepare: stale: corpus.inputs.0 changed since prepare read it; run `miniplm prepare --force` "
        "to redo prepare" in out
    )
    assert (
        "select: stale: corpus.inputs.0 changed since prepare read it; run `miniplm prepare --force` "
        "to redo prepare, then `miniplm select --force`" in out
    )

"""A stage defined here alone (one object, one registry call) runs through `miniplm run`, `miniplm slurm
--dry-run`, `miniplm status` and its own subcommand, with no other change to miniplm."""

import json
import re

import pytest

from miniplm import stages
from miniplm.cli import main
from miniplm.rundir import shard_name
from miniplm.stage import Part, ShardedStage, StageRun
from tests.conftest import write_jsonl


class CountWords(ShardedStage):
    """Counts the words of each main-split document shard into RUN_DIR/word-counts/."""

    name = "count-words"
    summary = "count the words of every main-split document"
    description = "Writes RUN_DIR/word-counts/shard-*.json, one per main-split document shard."
    sections = ("seed", "corpus")

    def planned_shards(self, job, rd, part: Part):
        if rd.stage_state("prepare").get("state") != "done":
            return None
        return [shard_name(i, "") for i in range(len(rd.doc_shards("main")))]

    def inputs(self, run: StageRun):
        return [run.rd.stage_state("prepare")["config_hash"]]

    def outputs(self, run: StageRun):
        return [run.rd.root / "word-counts"]

    def shards(self, run: StageRun):
        return self.planned_shards(run.job, run.rd, run.part)

    def run_shard(self, run: StageRun, index: int):
        import polars as pl

        texts = pl.read_parquet(run.rd.doc_shards("main")[index])["text"].to_list()
        out = run.rd.root / "word-counts" / shard_name(index, ".json")
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"documents": len(texts), "words": sum(len(t.split()) for t in texts)}))

    def finish(self, run: StageRun):
        counts = [json.loads(p.read_text()) for p in sorted((run.rd.root / "word-counts").glob("*.json"))]
        return {"documents": sum(c["documents"] for c in counts), "words": sum(c["words"] for c in counts)}

    def describe(self, job, result):
        return [f"count-words: {result['words']:,} words in {result['documents']:,} documents"]


@pytest.fixture
def toy_stage():
    stage = stages.register(CountWords(), after="prepare")
    yield stage
    stages.unregister(stage.name)


def test_a_stage_declared_in_one_place_runs_everywhere(toy_stage, write_job, tmp_path, capsys):
    docs = [{"text": " ".join(["word"] * (i % 7 + 1)) + f" doc{i}"} for i in range(60)]
    job = write_job([{"path": str(write_jsonl(tmp_path / "d.jsonl", docs)), "format": "jsonl"}], docs_per_shard=10,
                    reference_fraction=0.0, heldout_fraction=0.0)

    with pytest.raises(SystemExit) as exit_:
        main(["count-words", "--help"])
    assert exit_.value.code == 0
    assert "Writes RUN_DIR/word-counts" in capsys.readouterr().out

    assert main(["run", str(job), "-q"]) == 0
    out = capsys.readouterr().out
    expected_words = sum(len(d["text"].split()) for d in docs)
    assert f"count-words: {expected_words:,} words in 60 documents" in out
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert list(manifest) == ["prepare", "count-words"]
    assert manifest["count-words"]["state"] == "done" and manifest["count-words"]["counts"]["words"] == expected_words
    assert len(list((tmp_path / "run" / "word-counts").glob("*.json"))) == 6

    assert main(["status", str(job)]) == 0
    table = capsys.readouterr().out.splitlines()[2:]
    assert [line.split()[:3] for line in table] == [["prepare", "done", "1/1"], ["count-words", "done", "6/6"]]

    assert main(["slurm", str(job), "--dry-run", "slurm.stages.count-words.max_tasks=4",
                 "run_dir=" + str(tmp_path / "fresh")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"count-words +array 4 of 4 tasks .*--dependency=afterok:<prepare>", out), out
    assert re.search(r"-m miniplm count-words \S+ --worker \"\$SLURM_ARRAY_TASK_ID\" --num-workers 4", out)

    # the stage's own subcommand: finished work is skipped; --force redoes it
    assert main(["count-words", str(job), "-q", "--force"]) == 0
    assert f"{expected_words:,} words" in capsys.readouterr().out


def test_slurm_settings_for_an_unregistered_stage_are_refused(write_job, tmp_path):
    from miniplm.errors import ConfigError
    from miniplm.job import load_job

    job = write_job([{"path": str(write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])), "format": "jsonl"}])
    with pytest.raises(ConfigError, match="unknown stage 'count-words'"):
        load_job(job, ["slurm.stages.count-words.max_tasks=4"])

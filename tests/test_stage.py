"""A stage defined here alone (one object, one registry call) runs through `miniplm run`, `miniplm slurm
--dry-run`, `miniplm status` and its own subcommand, with no other change to miniplm."""

import json
import re

import pytest

from miniplm import compute, outputs, stages
from miniplm.cli import main
from miniplm.entry_stage import EntryStage
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

    def reads(self, job, part: Part):
        return [outputs.documents("main")]

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
    job = write_job(
        [{"path": str(write_jsonl(tmp_path / "d.jsonl", docs)), "format": "jsonl"}],
        docs_per_shard=10,
        reference_fraction=0.0,
        heldout_fraction=0.0,
        near_duplicates=None,  # the documents differ by one word: every one is counted here
    )

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

    assert (
        main(
            [
                "slurm",
                str(job),
                "--dry-run",
                "slurm.stages.count-words.max_tasks=4",
                "run_dir=" + str(tmp_path / "fresh"),
            ]
        )
        == 0
    )
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


class UnigramLogits(EntryStage):
    """Stored top-k log-probs for offline KD from another source than the teacher-logits stage's:
    declared here alone, in its place. It reads a token set's rows and records the FLOPs it spent."""

    name = "teacher-logits"
    only = "logits set"

    def entries_of(self, job):
        return job.teacher_logits

    def reads(self, job, part: Part):
        return [outputs.tokens(part.item.tokens, why="stored log-probs of a token set")]

    def spends_compute(self, entry: str) -> bool:
        return True


@pytest.fixture
def logits_stage():
    original = stages.get("teacher-logits")
    stages.unregister(original.name)
    stage = stages.register(UnigramLogits(), after="tokenize")
    yield stage
    stages.unregister(stage.name)
    stages.register(original, after="tokenize")


def test_a_stage_reading_a_token_set_is_chained_after_it_and_charged_to_its_students(logits_stage, tmp_path, capsys):
    from miniplm.config import JobConfig
    from miniplm.rundir import RunDir

    job_file = tmp_path / "job.yaml"
    student = {"preset": "tiny", "steps": 1, "tokens": "main"}
    job_file.write_text(
        json.dumps(
            {
                "run_dir": str(tmp_path / "run"),
                "corpus": {"inputs": [{"path": str(tmp_path / "d.jsonl"), "format": "jsonl"}]},
                "teacher": {"model": "smollm2-135m"},
                "tokenize": [{"name": "main", "input": "main"}, {"name": "other", "input": "main"}],
                "teacher_logits": [{"name": "top", "tokens": "main"}],
                "students": [
                    {"name": "kd", "kd": {"source": "offline", "logits": "top"}, **student},
                    {"name": "plain", **student},
                ],
            }
        )
    )
    write_jsonl(tmp_path / "d.jsonl", [{"text": "a b c"}])
    assert main(["slurm", str(job_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  teacher-logits/top +array .*--dependency=afterok:<tokenize/main> ", out, flags=re.M), out
    assert re.search(r"^  train/kd +1 job: .*--dependency=afterok:<teacher-logits/top> ", out, flags=re.M), out
    assert re.search(r"^  train/plain +1 job: .*--dependency=afterok:<tokenize/main> ", out, flags=re.M), out

    job = JobConfig.model_validate(json.loads(job_file.read_text()))
    rd = RunDir(job.run_dir)
    rd.root.mkdir(parents=True, exist_ok=True)
    for entry, flops in (
        ("teacher-logits/top", {"unigram": 300.0}),
        ("train/kd", {"training": 10.0}),
        ("train/plain", {"training": 10.0}),
    ):
        rd.update_stage(entry, state="done", counts={"flops": compute.record(**flops)})
    assert compute.upstream(job, job.students[0]) == {"teacher-logits/top"}
    got = compute.student_compute(job, rd)
    assert got["kd"]["shared"] == 300.0 and got["kd"]["total"] == 310.0
    assert got["plain"]["shared"] == 0.0

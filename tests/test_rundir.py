import json
import multiprocessing as mp
import os

import pytest

from miniplm.files import atomic_path, atomic_write_json
from miniplm.rundir import RunDir
from miniplm.workers import Worker, resolve_worker


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
        assert not target.exists()
    assert target.read_text() == "whole"
    assert list(tmp_path.iterdir()) == [target]


def test_manifest_records_stage_state(tmp_path):
    rd = RunDir(tmp_path)
    rd.start_stage("prepare", "abc")
    assert rd.stage_state("prepare")["state"] == "running"
    rd.finish_stage("prepare", {"documents": 3})
    entry = json.loads(rd.manifest_file.read_text())["stages"]["prepare"]
    assert entry["state"] == "done" and entry["config_hash"] == "abc" and entry["counts"] == {"documents": 3}
    assert entry["started"] and entry["finished"]


def _bump(root, stage, n):
    rd = RunDir(root)
    for i in range(n):
        rd.update_stage(stage, **{f"k{i}": i})


def test_manifest_updates_from_many_processes_are_not_lost(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_bump, args=(tmp_path, f"s{p}", 20)) for p in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    stages = RunDir(tmp_path).read_manifest()["stages"]
    assert sorted(stages) == ["s0", "s1", "s2", "s3"]
    assert all(len(v) == 20 for v in stages.values())


def test_markers_carry_the_config_hash(tmp_path):
    rd = RunDir(tmp_path)
    assert not rd.is_done("score", "shard-00001", "h1")
    rd.mark_done("score", "shard-00001", "h1")
    assert rd.is_done("score", "shard-00001", "h1")
    assert not rd.is_done("score", "shard-00001", "h2")
    rd.clear_markers("score")
    assert not rd.is_done("score", "shard-00001", "h1")


def test_worker_from_flags_slurm_and_ranks():
    assert resolve_worker(env={}) == Worker(0, 1)
    assert resolve_worker(2, 5, env={"RANK": "1", "WORLD_SIZE": "2"}) == Worker(2, 5)
    assert resolve_worker(
        env={"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "5"}
    ) == Worker(2, 4)
    assert resolve_worker(env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}) == Worker(1, 3)
    assert resolve_worker(env={"RANK": "3", "WORLD_SIZE": "8"}) == Worker(3, 8)
    with pytest.raises(ValueError):
        resolve_worker(1, None, env={})
    with pytest.raises(ValueError):
        Worker(4, 4)


def test_every_shard_has_exactly_one_owner():
    for count in (1, 2, 3, 7):
        owned = [Worker(i, count).owned(20) for i in range(count)]
        assert sorted(s for o in owned for s in o) == list(range(20))
        assert all(Worker(i, count).owns(s) for i, o in enumerate(owned) for s in o)


def test_atomic_write_json_round_trip(tmp_path):
    atomic_write_json(tmp_path / "a" / "b.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": [1, 2]}


def test_force_joins_a_running_stage_instead_of_wiping_it(tmp_path):
    rd = RunDir(tmp_path / "run")
    out = tmp_path / "run" / "scores"
    assert rd.open_stage("score", "h1", "job: 1\n", [out], force=False) is False
    out.mkdir()
    (out / "shard-00000.parquet").write_text("finished by another array task")
    assert rd.open_stage("score", "h1", "job: 1\n", [out], force=True) is False
    assert (out / "shard-00000.parquet").exists()
    rd.finish_stage("score", {})
    assert rd.open_stage("score", "h1", "job: 1\n", [out], force=False) is True
    assert rd.open_stage("score", "h1", "job: 1\n", [out], force=True) is False  # redo a finished stage
    assert not out.exists() and rd.stage_state("score")["state"] == "running"
    with pytest.raises(Exception, match="different config"):
        rd.open_stage("score", "h2", "job: 2\n", [out], force=False)


def _prepared_job(write_job, tmp_path, run_dir, n=30, **corpus):
    from tests.conftest import write_jsonl

    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"document number {i}"} for i in range(n)])
    return write_job([{"path": str(path), "format": "jsonl"}], run_dir=run_dir, **corpus)


def test_force_deletes_only_what_miniplm_wrote(write_job, tmp_path):
    from miniplm.cli import main

    run = tmp_path / "X"
    (run / "docs").mkdir(parents=True)
    (run / "docs" / "notes.md").write_text("hi\n")  # the user's, in a folder prepare writes to
    job = _prepared_job(write_job, tmp_path, run, docs_per_shard=5, reference_fraction=0.0, heldout_fraction=0.0)
    assert main(["prepare", str(job), "-q", "--force"]) == 0  # no manifest yet: nothing is miniplm's
    assert (run / "docs" / "notes.md").read_text() == "hi\n"
    assert len(RunDir(run).doc_shards("main")) == 6

    (run / "docs" / "main" / "README").write_text("mine too\n")  # added after prepare finished
    assert main(["prepare", str(job), "-q", "--force", "corpus.docs_per_shard=10"]) == 0
    assert (run / "docs" / "notes.md").read_text() == "hi\n"
    assert (run / "docs" / "main" / "README").read_text() == "mine too\n"
    assert [p.name for p in RunDir(run).doc_shards("main")] == [f"shard-0000{i}.parquet" for i in range(3)]
    record = json.loads((run / "records" / "prepare.json").read_text())["files"]
    assert "docs/notes.md" not in record and "docs/main/README" not in record and "docs/stats.json" in record


def test_force_on_an_unfinished_stage_deletes_what_appeared_after_it_started(tmp_path):
    rd = RunDir(tmp_path / "run")
    out = rd.root / "scores"
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("the user's")
    assert rd.open_stage("score", "h1", "job: 1\n", [out], force=False) is False
    (out / "shard-00000.parquet").write_text("written by the stage before it was killed")
    rd.fail_stage("score", "killed")
    assert rd.open_stage("score", "h1", "job: 1\n", [out], force=True) is False
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_a_job_file_kept_in_the_run_dir_is_not_overwritten(write_job, tmp_path):
    from miniplm.cli import main

    run = tmp_path / "run"
    run.mkdir()
    job = _prepared_job(write_job, tmp_path, run)
    kept = run / "job.yaml"
    text = "# my experiment: do not lose this comment\n" + job.read_text()
    kept.write_text(text)
    assert main(["prepare", str(kept), "-q", "corpus.docs_per_shard=7"]) == 0
    assert kept.read_text() == text
    resolved = (run / "job.resolved.yaml").read_text()
    assert resolved.startswith("# The job as miniplm last ran it") and "docs_per_shard: 7" in resolved
    # where the name is free, the resolved job is job.yaml, and miniplm rewrites its own file
    other = tmp_path / "other"
    assert main(["prepare", str(job), "-q", f"run_dir={other}"]) == 0
    assert main(["prepare", str(job), "-q", f"run_dir={other}"]) == 0
    assert (other / "job.yaml").read_text().startswith("# The job as miniplm") and not (
        other / "job.resolved.yaml"
    ).exists()


def test_every_output_follows_the_umask(write_job, tmp_path):
    from miniplm.cli import main

    job = _prepared_job(write_job, tmp_path, tmp_path / "run", num_workers=1)
    old = os.umask(0o002)  # a group that shares the run directory
    try:
        assert main(["prepare", str(job), "-q"]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.relative_to(tmp_path / "run").as_posix() for p in files} >= {
        "manifest.json",
        "job.yaml",
        "docs/stats.json",
        "docs/rejects.jsonl",
        "records/prepare.json",
    }
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files} == {
        str(p.relative_to(tmp_path)): "0o664" for p in files
    }


@pytest.mark.parametrize(
    "content",
    [
        b'{"stages": {"prepare": {"state": "do',
        b"",
        b'{"stages": [1, 2]}',
        b"[]",
        b'{"stages": {"prepare": "done"}}',
        b"\xff\xfe",
    ],
)
def test_a_damaged_manifest_is_an_error_naming_it_and_the_way_out(write_job, tmp_path, content, capsys):
    from miniplm.cli import main

    job = _prepared_job(write_job, tmp_path, tmp_path / "run")
    assert main(["prepare", str(job), "-q"]) == 0
    manifest = tmp_path / "run" / "manifest.json"
    manifest.write_bytes(content)
    capsys.readouterr()
    for command in ("status", "prepare", "report"):
        assert main([command, str(job)]) == 1, command  # not a traceback
        error = capsys.readouterr().err
        assert f"{manifest}: the run's manifest is damaged" in error
        assert f"mv {manifest} {manifest}.damaged" in error


@pytest.mark.parametrize("name", ["..", ".", "", "../x", "/etc", "a/../.."])
def test_no_path_of_a_name_leaves_its_folder(tmp_path, name):
    from miniplm.errors import ConfigError

    rd = RunDir(tmp_path / "run")
    for build in (
        rd.model,
        rd.training,
        rd.metrics,
        rd.tokens,
        rd.generated,
        rd.teacher_logits,
        rd.eval_result,
        rd.work,
        lambda n: rd.marker("score", n),
        lambda n: rd.marker(n, "shard-00000"),
    ):
        with pytest.raises(ConfigError, match="not a name"):
            build(name)  # RUN_DIR/models/.. is RUN_DIR: a student's --force would delete the run
    with pytest.raises(ConfigError, match="not a name"):
        rd.model("train/s")  # one folder name, where a stage's entry may have two parts
    assert rd.model("s-kd.seed1") == rd.root / "models" / "s-kd.seed1"
    assert rd.work("train/s") == rd.root / "work" / "train" / "s"


def _finished_scores(tmp_path):
    rd = RunDir(tmp_path / "run")
    out = rd.root / "scores"
    assert rd.open_stage("score", "h1", "job: 1\n", [out], force=False) is False
    (out).mkdir()
    (out / "shard-00000.parquet").write_text("scores")
    rd.finish_stage("score", {})
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("not miniplm's")
    return rd, out, victim


def _edit(rd, stage, **fields):
    manifest = json.loads(rd.manifest_file.read_text())
    manifest["stages"][stage].update(fields)
    rd.manifest_file.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit", ["outputs", "record", "link"])
def test_force_deletes_nothing_outside_the_stage_s_own_folders(tmp_path, edit):
    from miniplm.errors import StageError

    rd, out, victim = _finished_scores(tmp_path)
    record = rd.root / "records" / "score.json"
    if edit == "outputs":  # an unfinished stage: what appeared under its outputs would be deleted
        _edit(rd, "score", state="failed", outputs=["scores", "../victim"])
    elif edit == "record":
        listed = json.loads(record.read_text())
        listed["files"]["../victim/precious.txt"] = listed["files"]["scores/shard-00000.parquet"]
        record.write_text(json.dumps(listed))
    else:  # a link inside the stage's folder to a folder outside the run
        (out / "link").symlink_to(victim)
        listed = json.loads(record.read_text())
        listed["files"]["scores/link/precious.txt"] = listed["files"]["scores/shard-00000.parquet"]
        record.write_text(json.dumps(listed))
    with pytest.raises(StageError, match="victim|link"):
        rd.open_stage("score", "h1", "job: 1\n", [out], force=True)
    assert (victim / "precious.txt").read_text() == "not miniplm's"
    assert (out / "shard-00000.parquet").exists()  # refused before anything was deleted

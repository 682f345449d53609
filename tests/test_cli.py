import json
import subprocess
import sys

from miniplm.cli import main
from tests.conftest import write_jsonl


def test_help_explains_the_stages(capsys):
    for argv in (["--help"], ["prepare", "--help"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0
    out = capsys.readouterr().out
    assert "prepare" in out and "key.path=value" in out and "--num-workers" in out and "--force" in out


def test_console_script_and_module_entry_points():
    for cmd in (["miniplm", "--help"], [sys.executable, "-m", "miniplm", "--help"]):
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0 and "usage: miniplm" in result.stdout


def test_prepare_prints_its_statistics(write_job, tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": "two"}, {"text": "one"}, b"{bad\n"])
    job_path = write_job([{"path": str(path), "format": "jsonl"}])
    assert main(["prepare", str(job_path), "-q", "corpus.reference_fraction=0"]) == 0
    out = capsys.readouterr().out
    assert "documents read" in out and "duplicates                1" in out and "malformed_json" in out
    assert json.loads((tmp_path / "run" / "docs" / "stats.json").read_text())["kept_total"] == 2


def test_config_errors_exit_2_with_the_key_and_no_traceback(write_job, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}])
    job_path = write_job([{"path": str(path), "format": "jsonl"}], docs_per_shard=-1)
    result = subprocess.run(["miniplm", "prepare", str(job_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{job_path}: invalid job" in result.stderr and "corpus.docs_per_shard" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_input_under_fail_exits_1_naming_the_line(write_job, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"body": "no text"}])
    job_path = write_job([{"path": str(path), "format": "jsonl"}], on_error="fail")
    result = subprocess.run(["miniplm", "prepare", str(job_path), "-q"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "d.jsonl:2: missing_text" in result.stderr and "Traceback" not in result.stderr


def test_a_reader_that_goes_away_does_not_fail_a_finished_stage(write_job, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": "two"}])
    job_path = write_job([{"path": str(path), "format": "jsonl"}])
    # like `miniplm prepare JOB | true`: the reader has gone before the counts are printed
    proc = subprocess.Popen(
        ["miniplm", "prepare", str(job_path), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == ""
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["prepare"]["state"] == "done"


def test_run_seeds_is_the_eval_seeds_override_and_needs_an_eval_section(write_job, tmp_path, capsys, monkeypatch):
    import yaml

    import miniplm.cli as cli

    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}])
    job_path = write_job([{"path": str(path), "format": "jsonl"}])
    assert main(["run", str(job_path), "--seeds", "3"]) == 2
    assert "--seeds" in capsys.readouterr().err and not (tmp_path / "run").exists()

    seen = []
    summary, description, _ = cli.COMMANDS["run"]
    monkeypatch.setitem(cli.COMMANDS, "run", (summary, description, lambda job, args: seen.append(job) or 0))
    job = yaml.safe_load(job_path.read_text()) | {"eval": {"models": [], "tasks": []}}
    job_path.write_text(yaml.safe_dump(job))
    assert main(["run", str(job_path), "--seeds", "3"]) == 0
    assert main(["run", str(job_path)]) == 0
    assert [j.eval.seeds for j in seen] == [3, 1]


def test_every_rerun_command_the_manifest_suggests_parses(tmp_path):
    """What errors and `status` tell a user to run (`records.rerun`) is a real command: the stage as a
    subcommand and the entry as --only, for every entry of every stage of a job with all of them."""
    import shlex

    from miniplm import stages
    from miniplm.cli import build_parser
    from miniplm.job import load_job
    from miniplm.records import rerun
    from miniplm.rundir import RunDir
    from tests.conftest import REPO

    job = load_job(REPO / "jobs" / "kd-compare.yaml", [f"run_dir={tmp_path / 'run'}"])
    rd = RunDir(job.run_dir)
    parser = build_parser()
    seen = set()
    for name in stages.names():
        stage = stages.get(name)
        if not hasattr(stage, "parts") or not stage.applies(job):
            continue
        for part in stage.parts(job):
            rd.open_stage(part.name, "hash", "", [], force=False, command=part.command)
            words = shlex.split(rerun(rd.stage_state(part.name), part.name) + " --force")
            assert words[0] == "miniplm", words
            args = parser.parse_args([words[1], str(tmp_path / "job.yaml"), *words[2:]])
            assert args.stage == name and args.force, words
            if stage.only is not None:
                assert args.only == part.name.split("/", 1)[1], words
            else:  # a part of a stage without --only (select-proxy) is redone with its stage
                assert "--only" not in words, words
            seen.add(part.name)
    assert {"generate/seqkd", "prune/pruned", "teacher-logits/random-top32", "tokenize/hybrid"} <= seen
    assert {"proxy", "rank-proxy", "select-proxy"} <= seen

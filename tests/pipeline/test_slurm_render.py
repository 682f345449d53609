"""`miniplm slurm --dry-run`: the scripts and the plan for the shipped jobs, without a cluster."""

import re
import subprocess
import sys

import pytest

from miniplm.corpus import prepare
from miniplm.job import load_job
from miniplm.pipeline import plan
from miniplm.pipeline.slurm import array_spec, plan_submissions
from miniplm.rundir import RunDir
from tests.conftest import REPO, write_jsonl


def _sbatch(text: str, key: str) -> list[str]:
    return re.findall(rf"^#SBATCH --{key}=(.*)$", text, flags=re.M)


@pytest.fixture
def pile(tmp_path):
    """Three small JSONL files standing in for the Pile."""
    src = tmp_path / "pile"
    src.mkdir()
    for f in range(3):
        write_jsonl(src / f"{f:02d}.jsonl", [{"text": f"file {f} document {i} " * 5} for i in range(30)])
    return [f"corpus.inputs.0.path={src}/*.jsonl", f"eval.corpora.0.path={src}/00.jsonl", f"run_dir={tmp_path / 'run'}"]


def _plan(job_file, overrides):
    job = load_job(job_file, overrides)
    return job, {s.step.name: s for s in plan_submissions(job, RunDir(job.run_dir), REPO / "job.yaml")}


def test_paper_job_renders_arrays_dependencies_and_nodes(pile):
    _, subs = _plan(REPO / "jobs" / "paper-pile-qwen.yaml", pile)
    students = [
        "qwen-200m",
        "qwen-500m",
        "qwen-1.2b",
        "qwen-200m-vanilla-kd",
        "qwen-500m-vanilla-kd",
        "qwen-1.2b-vanilla-kd",
    ]
    sets = ["tokenize/selected", "tokenize/random", "tokenize/heldout"]  # one step per token set
    assert list(subs) == [
        "prepare",
        "train-reference",
        "score",
        "rank",
        "select",
        *sets,
        *(f"train/{s}" for s in students),
        "eval",
    ]
    assert all(s.action == "submit" for s in subs.values())

    # arrays: prepare over the 3 input files; later stages at max_tasks, since the shards do not exist yet
    expected = {
        "prepare": ("0-2", 3),
        "score": ("0-511%64", 512),
        "rank": ("0-127", 128),
        "select": ("0-127", 128),
        **{name: ("0-255", 256) for name in sets},
        "eval": ("0-9", 10),
    }  # eval: one task per row (6 students, the reference, the teacher, 2 unigrams)
    for name, (array, workers) in expected.items():
        assert _sbatch(subs[name].text, "array") == [array], name
        assert f"--num-workers {workers} -q" in subs[name].text
        assert '--worker "$SLURM_ARRAY_TASK_ID"' in subs[name].text
        assert "--requeue" in subs[name].text
    assert _sbatch(subs["score"].text, "gres") == ["gpu:1"] == _sbatch(subs["eval"].text, "gres")
    assert _sbatch(subs["prepare"].text, "gres") == [] and _sbatch(subs["prepare"].text, "partition") == ["cpu"]
    assert _sbatch(subs["score"].text, "partition") == ["gpu"]
    assert _sbatch(subs["score"].text, "time") == ["12:00:00"] and _sbatch(subs["select"].text, "mem") == ["8G"]

    # the chain: each step after the steps it reads from; the students after the token shards, not each other
    after = {name: s.after for name, s in subs.items()}
    on_selected = ["<tokenize/selected>", "<tokenize/heldout>"]
    on_random = ["<tokenize/random>", "<tokenize/heldout>"]
    assert after == {
        "prepare": [],
        "train-reference": ["<prepare>"],
        "score": ["<train-reference>"],
        "rank": ["<score>"],
        "select": ["<rank>"],
        "tokenize/selected": ["<select>"],
        "tokenize/random": ["<select>"],
        "tokenize/heldout": ["<prepare>"],
        **{f"train/{s}": on_random if "vanilla" in s else on_selected for s in students},
        "eval": [f"<train/{s}>" for s in students],
    }
    for name in sets:  # each array task tokenizes its share of one set
        assert "-m miniplm tokenize " in subs[name].text and f"--only {name.split('/')[1]}" in subs[name].text
    assert _sbatch(subs["tokenize/heldout"].text, "partition") == ["cpu"]  # slurm.stages.tokenize applies to each

    # training: nodes x torchrun with one process per GPU, c10d rendezvous across nodes
    for name, nodes in (
        ("train-reference", 1),
        ("train/qwen-200m", 4),
        ("train/qwen-500m", 4),
        ("train/qwen-1.2b", 8),
        ("train/qwen-1.2b-vanilla-kd", 8),
    ):
        text = subs[name].text
        assert _sbatch(text, "nodes") == [str(nodes)] and _sbatch(text, "gres") == ["gpu:8"], name
        assert _sbatch(text, "ntasks-per-node") == ["1"] and "--nproc-per-node=8" in text
        assert ("--rdzv-backend=c10d" in text) == (nodes > 1) and ("--standalone" in text) == (nodes == 1)
    assert "-m miniplm train " in subs["train/qwen-1.2b"].text and "--only qwen-1.2b" in subs["train/qwen-1.2b"].text
    assert _sbatch(subs["train/qwen-1.2b"].text, "time") == ["7-00:00:00"]


def test_cluster_example_carries_every_user_setting(tmp_path):
    _, subs = _plan(REPO / "jobs" / "cluster-example.yaml", [f"run_dir={tmp_path / 'run'}"])
    for name, sub in subs.items():
        assert _sbatch(sub.text, "account") == ["my-project"] and "#SBATCH --mail-type=FAIL" in sub.text, name
        assert 'module load cuda/12.4\nsource "$HOME/venvs/miniplm/bin/activate"\n' in sub.text
        assert _sbatch(sub.text, "chdir") and _sbatch(sub.text, "output")[0].startswith(str(tmp_path / "run" / "logs"))
    assert _sbatch(subs["score"].text, "constraint") == ["h100"] and _sbatch(subs["select"].text, "constraint") == []
    assert _sbatch(subs["train/student-random"].text, "qos") == ["low"]
    assert _sbatch(subs["train/student-selected"].text, "qos") == ["normal"]
    assert _sbatch(subs["prepare"].text, "array") == ["0-2"]  # three bundled files
    assert _sbatch(subs["score"].text, "array") == ["0-15%8"]
    assert _sbatch(subs["train/student-selected"].text, "nodes") == ["2"]


def test_known_shards_give_one_task_per_unfinished_shard(tmp_path, pile):
    job_file = REPO / "jobs" / "paper-pile-qwen.yaml"
    overrides = pile + ["corpus.docs_per_shard=20", "corpus.reference_fraction=0.05"]
    job = load_job(job_file, overrides)
    prepare.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    n = len(rd.doc_shards("main"))
    assert n >= 4
    _, subs = _plan(job_file, overrides)
    assert "prepare" not in [name for name, s in subs.items() if s.action == "submit"]
    assert subs["prepare"].action == "done" and subs["train-reference"].after == []
    assert _sbatch(subs["score"].text, "array") == [f"0-{n - 1}%64"] and f"--num-workers {n} " in subs["score"].text

    # two shards scored (their markers), the stage still open: only the others' tasks go again
    rd.start_stage("score", "h")
    for i in (0, 2):
        rd.mark_done("score", f"shard-{i:05d}", "h")
    assert plan.pending_shards(job, rd, plan.step_named(job, "score")) == [1, *range(3, n)]
    _, subs = _plan(job_file, overrides)
    assert subs["score"].tasks == [1, *range(3, n)] and subs["score"].num_workers == n


def test_array_spec():
    assert array_spec([0, 1, 2, 3], None) == "0-3"
    assert array_spec([0, 1, 2, 3], 2) == "0-3%2"
    assert array_spec([3], None) == "3"
    assert array_spec([1, 4, 5], 8) == "1,4,5%8"


def test_dry_run_command_prints_scripts_and_plan_and_submits_nothing(pile, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "miniplm", "slurm", str(REPO / "jobs" / "paper-pile-qwen.yaml"), "--dry-run", *pile],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("#!/bin/bash") == 15  # 5 steps before tokenize, 3 token sets, 6 students, eval
    assert "dry run: would submit" in out.stdout
    assert re.search(
        r"score +array 512 of 512 tasks .*sbatch --parsable --dependency=afterok:<train-reference>", out.stdout
    )
    snapshot = re.search(r"-m miniplm score (\S+/slurm/job-[0-9a-f]{12}\.yaml) ", out.stdout)
    assert snapshot and snapshot.group(1).startswith(str(tmp_path / "run"))
    assert not (tmp_path / "run" / "slurm").exists()  # named, not written


def test_unknown_slurm_stage_is_an_error(tmp_path, pile):
    from miniplm.config import ConfigError

    with pytest.raises(ConfigError, match="slurm: stages: unknown stage 'scoring'"):
        load_job(REPO / "jobs" / "paper-pile-qwen.yaml", pile + ["slurm.stages.scoring.gpus=1"])


def test_resubmission_waits_for_live_jobs_and_replaces_those_that_can_never_start(pile, monkeypatch):
    import orjson

    from miniplm.pipeline import slurm

    job = load_job(REPO / "jobs" / "paper-pile-qwen.yaml", pile)
    rd = RunDir(job.run_dir)
    slurm.records_file(rd).parent.mkdir(parents=True)
    names = [s.name for s in plan.steps(job)]
    slurm.records_file(rd).write_bytes(
        b"".join(
            orjson.dumps({"step": name, "job_id": str(10 + i), "tasks": [0], "num_workers": 1}) + b"\n"
            for i, name in enumerate(names)
        )
    )

    def queue(live):
        monkeypatch.setattr(slurm, "queue_states", lambda ids: {k: slurm.QueueState(*v) for k, v in live.items()})
        return {s.step.name: s for s in plan_submissions(job, rd, REPO / "job.yaml")}

    # prepare still running, the rest pending behind it: nothing is submitted twice
    live = {"10_0": ("RUNNING", "None"), **{str(10 + i): ("PENDING", "Dependency") for i in range(1, len(names))}}
    subs = queue(live)
    assert all(s.action == "queued" for s in subs.values())
    assert subs["score"].job_id == "12"

    # prepare failed (gone from the queue); what waited on it can never start: all of it goes again
    subs = queue({str(10 + i): ("PENDING", "DependencyNeverSatisfied") for i in range(1, len(names))})
    assert all(s.action == "submit" for s in subs.values())
    assert subs["prepare"].cancel == [] and subs["score"].cancel == ["12"]
    assert subs["eval"].cancel == [str(10 + names.index("eval"))]
    assert subs["score"].after == ["<train-reference>"] and "replaces pending job 12" in subs["score"].note

    # a step submitted anew takes the still-pending steps after it along, chained to the new job
    subs = queue({str(10 + i): ("PENDING", "Dependency") for i in range(3, len(names))})
    assert [subs[n].action for n in ("prepare", "train-reference", "score", "rank", "select")] == ["submit"] * 5
    assert subs["rank"].cancel == ["13"] and subs["rank"].after == ["<score>"]
    assert subs["select"].cancel == ["14"] and subs["select"].after == ["<rank>"]


def test_squeue_failure_is_an_error_not_an_empty_queue(monkeypatch):
    from miniplm.pipeline import slurm

    def failing(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "slurm_load_jobs error: Unable to contact slurm controller")

    monkeypatch.setattr(slurm.subprocess, "run", failing)
    with pytest.raises(slurm.SlurmError, match="Unable to contact slurm controller"):
        slurm.queue_states({"12"})
    assert slurm.queue_states(set()) == {}


def test_kd_compare_job_renders_generate_and_prune_as_array_steps(tmp_path):
    _, subs = _plan(REPO / "jobs" / "kd-compare.yaml", [f"run_dir={tmp_path / 'run'}"])
    names = list(subs)
    assert names[:14] == [
        "prepare",
        "train-reference",
        "score",
        "proxy",
        "rank",
        "select",
        "generate/seqkd",
        "prune/pruned",
        "tokenize/selected",
        "tokenize/random",
        "tokenize/random-filtered",
        "tokenize/proxy-selected",
        "tokenize/written",
        "tokenize/hybrid",
    ]  # one step per part; a mix after the sets it draws on
    # each step waits for the steps it reads from only (one reached through another is not listed again)
    assert (subs["generate/seqkd"].after, subs["prune/pruned"].after) == (["<prepare>"], ["<prepare>"])
    assert subs["tokenize/random"].after == ["<select>"] and subs["tokenize/written"].after == ["<generate/seqkd>"]
    assert subs["tokenize/hybrid"].after == ["<tokenize/random>", "<tokenize/written>"]
    assert subs["teacher-logits/random-top32"].after == ["<tokenize/random>"]
    assert subs["train/scratch.seed1"].after == ["<tokenize/random>"]
    assert subs["train/seqkd"].after == ["<tokenize/written>"]
    assert subs["train/vanilla-kd"].after == ["<teacher-logits/random-top32>"]
    assert subs["train/pruned-kd"].after == ["<prune/pruned>", "<teacher-logits/random-top32>"]

    def held_up_by(failed: str) -> set[str]:
        """The steps that wait for `failed`, directly or through a chain."""
        out: set[str] = set()
        for name, sub in subs.items():  # plan order: what a step waits for comes before it
            if any(a in (f"<{failed}>", *(f"<{n}>" for n in out)) for a in sub.after):
                out.add(name)
        return out

    # a failed generate holds up the written corpus, what mixes it and what trains on either (and eval,
    # which compares every student); never prune, another token set or a student without them
    seqkd_students = {f"train/{s}{r}" for s in ("seqkd", "hybrid") for r in ("", ".seed1", ".seed2")}
    assert held_up_by("generate/seqkd") == {
        "tokenize/written",
        "tokenize/hybrid",
        "teacher-logits/hybrid-top32",
        "eval",
        *seqkd_students,
    }
    # a failed teacher-logits set holds up only the students distilled from it
    assert held_up_by("teacher-logits/selected-top32") == {
        "eval",
        "train/miniplm-kd",
        "train/miniplm-kd.seed1",
        "train/miniplm-kd.seed2",
    }
    for name in ("tokenize/written", "teacher-logits/hybrid-top32"):
        assert f"--only {name.split('/')[1]}" in subs[name].text, name
    assert sorted(subs["eval"].after) == sorted(f"<{n}>" for n in subs if n.startswith("train/"))
    assert "-m miniplm generate" in subs["generate/seqkd"].text and "--requeue" in subs["generate/seqkd"].text
    assert _sbatch(subs["prune/pruned"].text, "array") == ["0"]  # one model to prune: one task
    assert "-m miniplm prune" in subs["prune/pruned"].text

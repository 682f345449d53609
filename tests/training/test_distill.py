"""Distillation in training, end to end on CPU with tiny models: online KD, offline KD from the
teacher-logits stage (top-k = vocabulary: the online losses; top-32: below them), ZeRO-3, kill -9
and resume for training and for the stage, and teachers with another tokenizer refused."""

import json
from pathlib import Path

import pytest
import yaml

from miniplm.models.flops import forward_flops_per_token
from tests.training.runs import copy_run, kill_when, metrics, miniplm, tokenized_run

STEPS = 8
VOCAB = 300


def _student(name: str, **extra) -> dict:
    return {
        "name": name,
        "preset": "tiny",
        "tokens": "main",
        "steps": STEPS,
        "batch_tokens": 512,
        "micro_batch": 4,
        "warmup_steps": 2,
        "checkpoint_every": 2,
        **extra,
    }


LOGITS = [
    {
        "name": "full",
        "tokens": "main",
        "top_k": VOCAB,
        "logprob_dtype": "float32",
        "batch_tokens": 512,
        "checkpoint_every": 1,
    },
    {"name": "top32", "tokens": "main", "top_k": 32, "batch_tokens": 512, "checkpoint_every": 1},
]
STUDENTS = [
    _student("online", kd={"loss": "forward_kl", "weight": 0.5}),
    _student("offline-full", kd={"source": "offline", "logits": "full"}),
    _student("offline-32", kd={"source": "offline", "logits": "top32"}),
]


@pytest.fixture(scope="module")
def tokenized(tiny_models, tmp_path_factory):
    return tokenized_run(
        tmp_path_factory.mktemp("distill"), tiny_models["teacher"], {"teacher_logits": LOGITS, "students": STUDENTS}
    )


@pytest.fixture(scope="module")
def uninterrupted(tokenized):
    path = copy_run(tokenized, "clean")
    for stage in ("teacher-logits", "train"):
        result = miniplm(stage, str(path))
        assert result.returncode == 0, result.stderr[-3000:]
    return path


def _manifest(path: Path) -> dict:
    run_dir = Path(yaml.safe_load(path.read_text())["run_dir"])
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


def _same_losses(a: dict[int, dict], b: dict[int, dict], **tolerance) -> None:
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        for key in ("loss", "ce_loss", "kd_loss"):
            assert a[step][key] == pytest.approx(b[step][key], **tolerance), (step, key)


def test_offline_top_k_of_the_vocabulary_trains_like_online_kd(uninterrupted):
    online = metrics(uninterrupted, "online")
    assert all(
        m["kd_loss"] > 0 and m["loss"] == pytest.approx(0.5 * m["ce_loss"] + 0.5 * m["kd_loss"], rel=1e-5)
        for m in online.values()
    )
    _same_losses(metrics(uninterrupted, "offline-full"), online, rel=1e-4)
    # top-32 of 300 tokens: the same student at step 1, a smaller KD term (a lower bound of the full one)
    top32 = metrics(uninterrupted, "offline-32")
    assert top32[1]["ce_loss"] == pytest.approx(online[1]["ce_loss"], rel=1e-6)
    assert 0 < top32[1]["kd_loss"] < online[1]["kd_loss"]


def test_compute_and_storage_are_recorded(uninterrupted, tiny_models):
    from transformers import AutoConfig

    stages = _manifest(uninterrupted)
    tokens = STEPS * 512
    student = AutoConfig.from_pretrained(
        Path(yaml.safe_load(uninterrupted.read_text())["run_dir"]) / "models" / "online"
    )
    teacher = AutoConfig.from_pretrained(tiny_models["teacher"])
    online = stages["train/online"]["counts"]
    assert online["flops"]["by"]["teacher"] == pytest.approx(tokens * forward_flops_per_token(teacher, 32.5))
    assert online["flops"]["by"]["training"] == pytest.approx(tokens * 3 * forward_flops_per_token(student, 32.5))
    assert stages["train/offline-32"]["counts"]["flops"]["by"]["teacher"] == 0  # spent by the teacher-logits stage:
    logits = stages["teacher-logits/top32"]["counts"]
    rows = stages["tokenize/main"]["counts"]["rows"]
    assert logits["rows"] == rows and logits["tokens"] == rows * 64
    assert logits["flops"]["total"] == pytest.approx(rows * 64 * forward_flops_per_token(teacher, 32.5))
    # per position: 32 uint16 ids, 32 float16 log-probs, one float16 remaining mass (+ the file's framing)
    assert 130 <= logits["bytes_per_token"] < 140
    assert 300 * 6 + 4 <= stages["teacher-logits/full"]["counts"]["bytes_per_token"] < 300 * 6 + 20


def test_kill_9_mid_kd_run_resumes_with_the_same_losses(tokenized, uninterrupted):
    path = copy_run(tokenized, "killed-train")
    log = Path(yaml.safe_load(path.read_text())["run_dir"]) / "train" / "online" / "metrics.jsonl"
    kill_when(["train", str(path), "--only", "online"], lambda: log.exists() and len(log.read_text().splitlines()) >= 3)
    logged = len(log.read_text().splitlines())
    assert 3 <= logged < STEPS, f"the kill landed after step {logged}"
    result = miniplm("train", str(path), "--only", "online")
    assert result.returncode == 0, result.stderr[-3000:]
    _same_losses(metrics(path, "online"), metrics(uninterrupted, "online"), abs=1e-5)


def test_kill_9_mid_shard_then_rerun_writes_the_same_bytes(tokenized, uninterrupted):
    path = copy_run(tokenized, "killed-logits")
    run_dir = Path(yaml.safe_load(path.read_text())["run_dir"])
    scratch = run_dir / "work" / "teacher-logits" / "top32" / "shard-00000"
    kill_when(["teacher-logits", str(path), "--only", "top32"], lambda: len(list(scratch.glob("batches-*"))) >= 2)
    saved = len(list(scratch.glob("batches-*")))
    assert saved >= 2 and not (run_dir / "teacher-logits" / "top32" / "shard-00000.arrow").exists(), (
        "the kill did not land inside the first shard"
    )
    result = miniplm("teacher-logits", str(path), "--only", "top32")
    assert result.returncode == 0, result.stderr[-3000:]
    clean = Path(yaml.safe_load(uninterrupted.read_text())["run_dir"]) / "teacher-logits" / "top32"
    shards = sorted(p.name for p in clean.glob("shard-*.arrow"))
    assert len(shards) >= 2
    for name in shards:
        assert (run_dir / "teacher-logits" / "top32" / name).read_bytes() == (clean / name).read_bytes(), name


def _refuse(tmp_path, tiny_models, monkeypatch, **job_keys):
    """load_job on a job whose teacher has another tokenizer; no model may load meanwhile."""
    import transformers

    from miniplm.errors import ConfigError
    from miniplm.job import load_job

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", no_model)
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    job = {
        "run_dir": str(tmp_path / "run"),
        "corpus": {"inputs": [{"path": str(tmp_path / "d.jsonl"), "format": "jsonl"}]},
        "teacher": {"model": tiny_models["teacher"]},
        "tokenize": [{"name": "main", "input": "main"}],
        **job_keys,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError) as refused:
        load_job(tmp_path / "job.yaml")
    return str(refused.value)


def test_a_teacher_with_another_tokenizer_is_refused_before_any_model_loads(tmp_path, tiny_models, monkeypatch):
    other = tiny_models["other"]
    message = _refuse(tmp_path, tiny_models, monkeypatch, students=[_student("s", kd={"teacher": other})])
    assert "students.s.kd" in message and repr(other) in message and repr(tiny_models["teacher"]) in message
    assert "vocabularies differ" in message and "ULD or DSKD" in message
    message = _refuse(
        tmp_path, tiny_models, monkeypatch, teacher_logits=[{"name": "t", "tokens": "main", "teacher": other}]
    )
    assert "teacher_logits.t" in message and repr(other) in message


def test_kd_settings_are_checked_when_the_job_loads(tmp_path, tiny_models):
    from miniplm.config import KDConfig
    from miniplm.errors import ConfigError
    from miniplm.job import load_job

    with pytest.raises(ValueError, match="name the teacher_logits set"):
        KDConfig(source="offline")
    path = tmp_path / "j.yaml"
    job = {
        "run_dir": str(tmp_path / "r"),
        "corpus": {"inputs": [{"path": "x", "format": "jsonl"}]},
        "teacher": {"model": tiny_models["teacher"]},
        "tokenize": [{"name": "a", "input": "main"}, {"name": "b", "input": "main"}],
        "teacher_logits": [{"name": "t", "tokens": "a", "temperature": 2.0}],
        "students": [_student("s", tokens="b", kd={"source": "offline", "logits": "t", "temperature": 2.0})],
    }
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError, match="holds log-probs for token set 'a', and the student trains on 'b'"):
        load_job(path)
    job["students"][0].update(tokens="a", kd={"source": "offline", "logits": "t"})
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError, match=r"kd.temperature: 1.0 differs from teacher_logits.t.temperature \(2.0\)"):
        load_job(path)


def test_the_stage_is_in_the_plan_status_and_slurm_scripts(tokenized, uninterrupted):
    """teacher-logits runs after tokenize and before the students; status counts its shards; slurm
    renders it as an array over the token set's shards that the offline-KD students wait for."""
    from miniplm.job import load_job
    from miniplm.pipeline import status
    from miniplm.pipeline.slurm import plan_submissions
    from miniplm.rundir import RunDir

    job = load_job(uninterrupted)
    steps = {s.step.name: s for s in status.collect(job)}
    names = list(steps)  # one step per token set and per logits set
    logit_steps = ["teacher-logits/full", "teacher-logits/top32"]
    assert names.index("tokenize/held") + 1 == names.index(logit_steps[0]) == names.index(logit_steps[1]) - 1
    assert names[names.index(logit_steps[1]) + 1].startswith("train/")
    shards = len(list(RunDir(job.run_dir).tokens("main").glob("shard-*.arrow")))
    for name in logit_steps:
        assert steps[name].state == "done" and steps[name].done == steps[name].total == shards

    root, _ = tokenized
    fresh = load_job(root / "base.yaml")  # tokenized, no teacher log-probs yet
    subs = {s.step.name: s for s in plan_submissions(fresh, RunDir(fresh.run_dir), root / "base.yaml")}
    logits = subs["teacher-logits/top32"]
    assert logits.action == "submit" and logits.num_workers == shards
    assert "-m miniplm teacher-logits " in logits.text and f"#SBATCH --array=0-{shards - 1}" in logits.text
    assert "--only top32" in logits.text and logits.after == []  # its token set is tokenized already
    # offline KD waits for the stored log-probs; online KD runs the teacher itself and waits for nothing
    # (its token set is tokenized already): a failed teacher-logits does not hold it up
    assert subs["train/offline-32"].after == ["<teacher-logits/top32>"] and subs["train/online"].after == []

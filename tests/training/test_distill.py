"""Distillation in training, end to end on CPU with tiny models: online KD, offline KD from the
teacher-logits stage (top-k = vocabulary: the online losses; top-32 and top-p: below them; sampled
tokens: about them), ZeRO-3, kill -9 and resume for training and for the stage, and teachers with
another tokenizer refused."""

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
    {"name": "sampled", "tokens": "main", "mode": "sampled", "top_k": 8, "logprob_dtype": "uint8",
     "batch_tokens": 512, "checkpoint_every": 1},
    {"name": "topp", "tokens": "main", "mode": "top_p", "top_p": 0.9, "top_k": 32, "logprob_dtype": "uint8",
     "batch_tokens": 512, "checkpoint_every": 1},
]  # fmt: skip
STUDENTS = [
    _student("online", kd={"loss": "forward_kl", "weight": 0.5}),
    _student("offline-full", kd={"source": "offline", "logits": "full"}),
    _student("offline-32", kd={"source": "offline", "logits": "top32"}),
    _student("offline-sampled", kd={"source": "offline", "logits": "sampled"}),
    _student("offline-topp", kd={"source": "offline", "logits": "topp"}),
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
    # top-p: fewer tokens where the teacher is sure, a lower bound again (in 8 bits)
    top_p = metrics(uninterrupted, "offline-topp")
    assert top_p[1]["ce_loss"] == pytest.approx(online[1]["ce_loss"], rel=1e-6)
    assert 0 < top_p[1]["kd_loss"] < online[1]["kd_loss"]
    # 8 draws a position: an estimate of the full KD term (unbiased: tests/training/test_kd_modes.py), here
    # one draw of it, of a term of 0.02 nats whose draws spread by about 0.003
    sampled = metrics(uninterrupted, "offline-sampled")
    assert sampled[1]["ce_loss"] == pytest.approx(online[1]["ce_loss"], rel=1e-6)
    assert sampled[1]["kd_loss"] == pytest.approx(online[1]["kd_loss"], rel=0.4)
    assert all(m["loss"] < sampled[1]["loss"] for step, m in sampled.items() if step > 4)


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
    # per position: 32 ids of 9 bits, 32 float16 log-probs, one float16 remaining mass (+ the file's framing)
    assert 36 + 66 <= logits["bytes_per_token"] < 36 + 66 + 4
    assert 337.5 + 301 * 4 <= stages["teacher-logits/full"]["counts"]["bytes_per_token"] < 337.5 + 301 * 4 + 8
    # 8 draws: 8 ids of 9 bits, 8 log-probs in 8 bits and their scale (two float16)
    assert 9 + 8 + 4 <= stages["teacher-logits/sampled"]["counts"]["bytes_per_token"] < 9 + 8 + 4 + 4


def test_kill_9_mid_kd_run_resumes_with_the_same_losses(tokenized, uninterrupted):
    path = copy_run(tokenized, "killed-train")
    log = Path(yaml.safe_load(path.read_text())["run_dir"]) / "train" / "online" / "metrics.jsonl"
    kill_when(["train", str(path), "--only", "online"], lambda: log.exists() and len(log.read_text().splitlines()) >= 3)
    logged = len(log.read_text().splitlines())
    assert 3 <= logged < STEPS, f"the kill landed after step {logged}"
    result = miniplm("train", str(path), "--only", "online")
    assert result.returncode == 0, result.stderr[-3000:]
    _same_losses(metrics(path, "online"), metrics(uninterrupted, "online"), abs=1e-5)


@pytest.mark.parametrize("name", ["top32", "sampled"])
def test_kill_9_mid_shard_then_rerun_writes_the_same_bytes(tokenized, uninterrupted, name):
    """Sampled too: its draws are seeded by the job's seed, the set, the shard and the batch."""
    path = copy_run(tokenized, f"killed-logits-{name}")
    run_dir = Path(yaml.safe_load(path.read_text())["run_dir"])
    scratch = run_dir / "work" / "teacher-logits" / name / "shard-00000"
    kill_when(["teacher-logits", str(path), "--only", name], lambda: len(list(scratch.glob("batches-*"))) >= 2)
    saved = len(list(scratch.glob("batches-*")))
    assert saved >= 2 and not (run_dir / "teacher-logits" / name / "shard-00000.arrow").exists(), (
        "the kill did not land inside the first shard"
    )
    result = miniplm("teacher-logits", str(path), "--only", name)
    assert result.returncode == 0, result.stderr[-3000:]
    clean = Path(yaml.safe_load(uninterrupted.read_text())["run_dir"]) / "teacher-logits" / name
    shards = sorted(p.name for p in clean.glob("shard-*.arrow"))
    assert len(shards) >= 2
    for shard in shards:
        assert (run_dir / "teacher-logits" / name / shard).read_bytes() == (clean / shard).read_bytes(), shard


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
    # sampled tokens estimate forward KL only
    job["teacher_logits"] = [{"name": "t", "tokens": "a", "mode": "sampled", "top_k": 12}]
    job["students"][0].update(kd={"source": "offline", "logits": "t", "loss": "reverse_kl"})
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError, match="kd.loss: reverse_kl cannot be estimated from set 't'.s sampled tokens"):
        load_job(path)
    # top_p is a setting of mode top_p
    job["teacher_logits"] = [{"name": "t", "tokens": "a", "top_p": 0.9}]
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError, match="top_p is read with mode: top_p only"):
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
    logit_steps = [f"teacher-logits/{entry['name']}" for entry in LOGITS]
    assert [names.index(step) for step in logit_steps] == list(
        range(names.index("tokenize/held") + 1, names.index("tokenize/held") + 1 + len(LOGITS))
    )
    assert names[names.index(logit_steps[-1]) + 1].startswith("train/")
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

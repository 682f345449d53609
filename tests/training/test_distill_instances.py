"""Distillation on the paper's own unit: jobs/paper-demo.yaml (packed instances, right-padded rows)
with tiny models, a student distilled online and one from stored log-probs. The first step's logged
loss equals a float64 computation, from the student's initial weights and the teacher, over the
step's rows with every PAD target skipped; the stored log-probs equal the teacher's own."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from miniplm.corpus.instance_rows import PAD
from miniplm.corpus.tokens import TokenRows
from miniplm.training.logit_files import TeacherLogitRows
from tests.pipeline.jobs import write_corpus

REPO = Path(__file__).resolve().parents[2]
VOCAB = 300
STUDENT = {
    "preset": "tiny",
    "tokens": "selected",
    "steps": 2,
    "batch_tokens": 256,
    "micro_batch": 8,
    "lr": 0.003,
    "warmup_steps": 1,
    "checkpoint_every": 2,
    "log_rows": True,
}


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    """The paper-demo job as it is (instances, half the tokens kept), on a tiny corpus with the tiny
    models, through tokenize, teacher-logits and the students."""
    root = tmp_path_factory.mktemp("paper-demo-kd")
    job = yaml.safe_load((REPO / "jobs" / "paper-demo.yaml").read_text())
    assert job["score"]["unit"] == "instance"
    job["run_dir"] = str(root / "run")
    job["corpus"]["inputs"] = [{"path": write_corpus(root / "corpus"), "format": "jsonl"}]
    job["teacher"] = {"model": tiny_models["teacher"]}
    job["reference"] = {"model": tiny_models["reference"]}
    job["score"].update(max_length=32, batch_tokens=256)
    job["tokenize"] = [{"name": "selected", "input": "selected", "seq_len": 32}]
    job["teacher_logits"] = [
        {"name": "full", "tokens": "selected", "top_k": VOCAB, "logprob_dtype": "float32", "batch_tokens": 256}
    ]
    job["students"] = [
        {"name": "online", **STUDENT, "kd": {"loss": "forward_kl", "weight": 0.5}},
        {"name": "offline", **STUDENT, "kd": {"source": "offline", "logits": "full"}},
    ]
    job.pop("eval")
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "miniplm", "run", str(path), "-q"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", path


def _metrics(run_dir: Path, student: str) -> dict[int, dict]:
    lines = (run_dir / "train" / student / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m for m in map(json.loads, lines)}


def _initial_student(job_path: Path, name: str):
    """The student's weights before its first step, built as training builds them."""
    from miniplm.job import load_job
    from miniplm.models.loading import load_tokenizer
    from miniplm.replicas import training_seed
    from miniplm.training.engine import build_model

    job = load_job(job_path)
    student = next(s for s in job.students if s.name == name)
    torch.manual_seed(training_seed(job, student))
    return build_model(student, load_tokenizer(job.teacher.model), 32, torch.float32, "cpu")


def _reference64(student, teacher, rows: np.ndarray) -> float:
    """0.5 CE + 0.5 KL(teacher || student) in float64, over the positions whose target is not PAD."""
    rows = torch.from_numpy(rows.astype(np.int64))
    inputs, targets = rows[:, :-1].clamp(min=0), rows[:, 1:].reshape(-1)
    keep = targets != PAD
    with torch.no_grad():
        z_s = student.double()(input_ids=inputs).logits.reshape(len(targets), -1)[keep]
        z_t = teacher.double()(input_ids=inputs).logits.reshape(len(targets), -1)[keep, :VOCAB]
    log_q, log_p = torch.log_softmax(z_s, -1), torch.log_softmax(z_t, -1)
    ce = -log_q.gather(1, targets[keep][:, None]).mean()
    kd = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return float(0.5 * ce + 0.5 * kd)


def test_kd_on_padded_instances_equals_float64_over_the_real_targets(run, tiny_models):
    from transformers import AutoModelForCausalLM

    run_dir, job_path = run
    tokens = TokenRows(run_dir / "tokens" / "selected")
    teacher = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"])
    for name in ("online", "offline"):
        metrics = _metrics(run_dir, name)
        assert sorted(metrics) == [1, 2] and all(np.isfinite(m["loss"]) and m["kd_loss"] > 0 for m in metrics.values())
        rows = np.stack([tokens[i] for i in metrics[1]["rows"]])
        assert (rows[:, 1:] == PAD).sum() > 10, "the step's rows hold no padding: the test would prove nothing"
        expected = _reference64(_initial_student(job_path, name), teacher, rows)
        assert metrics[1]["loss"] == pytest.approx(expected, rel=1e-5), name
        assert metrics[1]["loss"] == pytest.approx(0.5 * metrics[1]["ce_loss"] + 0.5 * metrics[1]["kd_loss"], rel=1e-6)


def test_stored_log_probs_are_the_teachers_at_every_predicted_position(run, tiny_models):
    from transformers import AutoModelForCausalLM

    run_dir, _ = run
    tokens, stored = TokenRows(run_dir / "tokens" / "selected"), TeacherLogitRows(run_dir / "teacher-logits" / "full")
    assert len(stored) == len(tokens)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"])
    rows = np.stack([tokens[i] for i in range(len(tokens))]).astype(np.int64)
    with torch.no_grad():
        log_p = torch.log_softmax(teacher(input_ids=torch.from_numpy(rows[:, :-1]).clamp(min=0)).logits.double(), -1)
    predicted = rows[:, 1:] != PAD
    for i in range(len(tokens)):
        row = stored.stored(i)
        ids, logp = row.ids, row.logp
        want = log_p[i].gather(1, torch.from_numpy(ids.astype(np.int64))).numpy()
        assert np.allclose(logp[predicted[i]], want[predicted[i]], atol=2e-5)
    counts = json.loads((run_dir / "manifest.json").read_text())["stages"]["teacher-logits/full"]["counts"]
    assert counts["tokens"] == int(predicted.sum()) < rows.shape[0] * 32  # PAD targets are not counted

"""A student's compute: its training plus equal shares of the work its data, weights and stored
teacher log-probs needed, checked against shares worked out by hand."""

import pytest

import miniplm.stages  # noqa: F401  (fills the registry compute walks; run alone, nothing else imports it)
from miniplm import compute
from miniplm.config import JobConfig
from miniplm.rundir import RunDir

STUDENT = {"steps": 1}
TINY = {"preset": "tiny", **STUDENT}


def _job(tmp_path, seeds: int = 1) -> JobConfig:
    return JobConfig.model_validate(
        {
            "run_dir": str(tmp_path / "run"),
            "corpus": {"inputs": [{"path": "x.jsonl", "format": "jsonl"}]},
            "teacher": {"model": "smollm2-135m"},
            "reference": {"train": {"preset": "tiny", "steps": 1}},
            "generate": [{"name": "seqkd"}],
            "prune": [{"name": "pruned", "target": {"preset": "tiny"}}],
            "tokenize": [
                {"name": "selected", "input": "selected"},
                {"name": "random", "input": "selected-random"},
                {"name": "written", "input": "generated/seqkd"},
                {"name": "mixed", "mix": {"written": 0.5, "random": 0.5}},
            ],
            "select": {"random_baseline": True},
            "teacher_logits": [{"name": "top32", "tokens": "selected"}],
            "students": [
                {"name": "plain", "tokens": "random", **TINY},
                {"name": "miniplm", "tokens": "selected", **TINY},
                {"name": "miniplm-kd", "tokens": "selected", "kd": {"source": "offline", "logits": "top32"}, **TINY},
                {"name": "seqkd", "tokens": "written", **TINY},
                {"name": "hybrid", "tokens": "mixed", "kd": {"source": "online"}, **TINY},
                {"name": "pruned-kd", "init": "pruned", "tokens": "random", "kd": {"source": "online"}, **STUDENT},
            ],
            "eval": {"seeds": seeds, "tasks": []},
        }
    )


def _spent(rd: RunDir, entry: str, **by: float) -> None:
    rd.update_stage(entry, state="done", counts={"flops": compute.record(**by)})


def test_each_entry_is_split_over_the_students_that_need_it(tmp_path):
    job = _job(tmp_path, seeds=2)
    rd = RunDir(job.run_dir)
    rd.root.mkdir(parents=True)
    _spent(rd, "train/reference", training=100.0)
    _spent(rd, "score", teacher=500.0, reference=100.0)
    _spent(rd, "generate/seqkd", generation=900.0)
    _spent(rd, "prune/pruned", calibration=70.0)
    _spent(rd, "teacher-logits/top32", teacher=400.0)
    online = ("hybrid", "pruned-kd")  # their teacher runs in the loop; offline KD's ran before
    for student in ("plain", "miniplm", "miniplm-kd", "seqkd", "hybrid", "pruned-kd"):
        for name in (student, f"{student}.seed1"):
            _spent(rd, f"train/{name}", training=10.0, teacher=5.0 if student in online else 0.0)

    assert compute.upstream(job, job.students[4]) == {"generate/seqkd"}  # the mix: its written half
    assert compute.upstream(job, job.students[5]) == {"prune/pruned"}
    got = compute.student_compute(job, rd)
    shared = {
        "plain": 0.0,  # a random selection needs no scores
        "miniplm": (100 + 600) / 2,
        "miniplm-kd": (100 + 600) / 2 + 400,
        "seqkd": 900 / 2,  # with hybrid, whose mix draws on the same generated text
        "hybrid": 900 / 2,
        "pruned-kd": 70.0,
    }
    for student, share in shared.items():
        training = 15.0 if student in online else 10.0  # an online teacher's forward passes are in its training
        teacher = 5.0 if student in online else 0.0
        for name in (student, f"{student}.seed1"):  # a replica carries its student's full share
            assert got[name] == pytest.approx(
                {"training": training, "teacher": teacher, "shared": share, "total": training + share}
            )


def test_work_not_recorded_leaves_the_total_unknown(tmp_path):
    job = _job(tmp_path)
    rd = RunDir(job.run_dir)
    rd.root.mkdir(parents=True)
    _spent(rd, "train/seqkd", training=10.0)
    _spent(rd, "train/plain", training=10.0)
    got = compute.student_compute(job, rd)
    # generate has not finished
    assert got["seqkd"] == {"training": 10.0, "teacher": 0.0, "shared": None, "total": None}
    assert got["plain"] == {"training": 10.0, "teacher": 0.0, "shared": 0.0, "total": 10.0}
    assert got["hybrid"] == {"training": None, "teacher": None, "shared": None, "total": None}  # not trained yet


def _proxy_job(tmp_path, use: str) -> JobConfig:
    tokenize = [{"name": "selected", "input": "selected"}]
    students = [{"name": "miniplm", "tokens": "selected", **TINY}]
    if use == "beside":
        tokenize.append({"name": "proxy", "input": "selected-proxy"})
        students.append({"name": "miniplm-proxy", "tokens": "proxy", **TINY})
    return JobConfig.model_validate(
        {
            "run_dir": str(tmp_path / use),
            "corpus": {"inputs": [{"path": "x.jsonl", "format": "jsonl"}]},
            "teacher": {"model": "smollm2-135m"},
            "reference": {"train": {"preset": "tiny", "steps": 1}},
            "proxy": {"use": use},
            "tokenize": tokenize,
            "students": students,
        }
    )


def test_proxy_scores_charge_their_labels_fit_and_prediction(tmp_path):
    # instead: the LMs scored the sample alone, and the selection reads the proxy's scores
    job = _proxy_job(tmp_path, "instead")
    rd = RunDir(job.run_dir)
    rd.root.mkdir(parents=True)
    _spent(rd, "train/reference", training=100.0)
    _spent(rd, "score", teacher=50.0, reference=10.0)
    _spent(rd, "proxy", fit=3.0, predict=2.0)
    _spent(rd, "train/miniplm", training=10.0)
    assert compute.upstream(job, job.students[0]) == {"train/reference", "score", "proxy"}
    assert compute.student_compute(job, rd)["miniplm"]["shared"] == pytest.approx(100 + 60 + 5)

    # beside: the LMs scored everything for the LM selection; the proxy charges its sample's share itself
    job = _proxy_job(tmp_path, "beside")
    rd = RunDir(job.run_dir)
    rd.root.mkdir(parents=True)
    _spent(rd, "train/reference", training=100.0)
    _spent(rd, "score", teacher=500.0, reference=100.0)
    _spent(rd, "proxy", fit=3.0, predict=2.0, labels_teacher=50.0, labels_reference=10.0)
    for student in ("miniplm", "miniplm-proxy"):
        _spent(rd, f"train/{student}", training=10.0)
    assert compute.upstream(job, job.students[0]) == {"train/reference", "score"}
    assert compute.upstream(job, job.students[1]) == {"train/reference", "proxy"}
    got = compute.student_compute(job, rd)
    assert got["miniplm"]["shared"] == pytest.approx(100 / 2 + 600)
    assert got["miniplm-proxy"]["shared"] == pytest.approx(100 / 2 + 65)

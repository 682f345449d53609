"""The bundled corpus: present, small, labelled, and prepared by the demo job."""

import polars as pl

from miniplm.job import load_job
from miniplm.corpus import prepare

from tests.conftest import REPO

SAMPLE = REPO / "data" / "sample"


def test_bundled_corpus_is_small_and_labelled():
    files = sorted(SAMPLE.glob("*.parquet"))
    assert [f.name for f in files] == ["kjv.parquet", "noise.parquet", "python-docs.parquet"]
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    docs = pl.concat([pl.read_parquet(f) for f in files])
    counts = dict(docs.group_by("source").len().iter_rows())
    assert counts == {"kjv": 1189, "python-docs": 497, "noise-gibberish": 60, "noise-boilerplate": 60, "noise-ocr": 60}
    assert docs["id"].n_unique() == docs.height
    genesis = docs.filter(pl.col("id") == "kjv/Genesis/1")["text"][0]
    assert genesis.startswith("Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n")


def test_demo_job_prepares_the_bundled_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the demo job's paths are relative to the repository
    job = load_job(REPO / "jobs" / "demo.yaml", [f"run_dir={tmp_path / 'demo'}", "corpus.inputs.0.limit=null"])
    stats = prepare.STAGE.run(job, show_progress=False)
    assert stats["documents_read"] == 1866
    assert stats["duplicates"] == 9  # the repeated legal-footer pages
    assert stats["rejected_total"] == 0
    assert stats["kept_total"] == 1857
    assert set(stats["sources"]) == {"kjv", "python-docs", "noise-gibberish", "noise-boilerplate", "noise-ocr"}


def test_demo_job_reads_its_slice_of_the_bundled_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    job = load_job(REPO / "jobs" / "demo.yaml", [f"run_dir={tmp_path / 'demo'}"])
    stats = prepare.STAGE.run(job, show_progress=False)
    assert stats["documents_read"] == 3 * 160  # limit: 160 per file
    assert stats["kept_total"] + stats["duplicates"] + stats["rejected_total"] == 480


def test_bundled_eval_task_is_what_its_build_script_writes(tmp_path, monkeypatch):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("build_eval_task", REPO / "data" / "build_eval_task.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setattr(build, "HERE", tmp_path)
    (tmp_path / "sample").symlink_to(REPO / "data" / "sample")
    build.main()
    assert (tmp_path / "eval" / "bundled-cloze.jsonl").read_bytes() == (REPO / "data" / "eval" / "bundled-cloze.jsonl").read_bytes()
    items = [json.loads(line) for line in (REPO / "data" / "eval" / "bundled-cloze.jsonl").read_text().splitlines()]
    assert len(items) == 200 and all(len(i["choices"]) == 4 and 0 <= i["label"] < 4 for i in items)
    assert {i["source"] for i in items} == {"kjv", "python-docs"}


def test_demo_job_compares_its_two_students_in_the_report(monkeypatch):
    """The demo's last steps: both students evaluated on held-out text and the offline task, so its
    report gains the comparison table (the rendering is tested on a tiny run in tests/evaluation)."""
    from miniplm.evaluation.evaluate import targets
    from miniplm.pipeline.plan import steps

    monkeypatch.chdir(REPO)
    job = load_job(REPO / "jobs" / "demo.yaml")
    assert [s.name for s in steps(job)][-3:] == ["train/student-selected", "train/student-random", "eval"]
    assert [(t.name, t.trained_on) for t in targets(job)] == [("student-selected", "selected"),
                                                              ("student-random", "random")]
    assert job.select.random_baseline and job.eval.heldout and job.eval.tasks == ["bundled_cloze"]
    for path in job.eval.task_paths:
        assert (REPO / path / "bundled_cloze.yaml").exists()


def test_kd_demo_job_trains_one_student_shape_for_the_same_budget_each_way(monkeypatch):
    """The distillation demo: students of one shape, the same steps and tokens, one per method (no KD
    on random and on selected text, vanilla KD online, offline top-32 forward and reverse KL, selection
    with KD), each read by eval; the stored log-probs are for the token set the student trains on."""
    from miniplm.evaluation.evaluate import targets
    from miniplm.pipeline.plan import steps

    monkeypatch.chdir(REPO)
    job = load_job(REPO / "jobs" / "kd-demo.yaml")
    students = {s.name: s for s in job.students}
    methods = {name: (s.tokens, s.kd and (s.kd.source, s.kd.loss, s.kd.logits)) for name, s in students.items()}
    assert methods == {"random": ("random", None), "selected": ("selected", None),
                       "vanilla-kd": ("random", ("online", "forward_kl", None)),
                       "offline-kd": ("random", ("offline", "forward_kl", "random-top32")),
                       "offline-reverse-kl": ("random", ("offline", "reverse_kl", "random-top32")),
                       "selected-kd": ("selected", ("offline", "forward_kl", "selected-top32"))}
    assert len({(s.preset, s.steps, s.batch_tokens, s.lr) for s in job.students}) == 1
    assert all(s.kd.weight == 0.5 for s in job.students if s.kd)
    assert {t.name: t.tokens for t in job.teacher_logits} == {"random-top32": "random", "selected-top32": "selected"}
    names = [s.name for s in steps(job)]
    assert names.index("teacher-logits") < names.index("train/offline-kd") and names[-1] == "eval"
    assert {t.name for t in targets(job)} == set(students)

"""The bundled corpus: present, small, labelled, and prepared by the demo job."""

import polars as pl

from miniplm.corpus import prepare
from miniplm.job import load_job
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
    # the whole corpus, read and deduplicated (the quality rules are measured on the demo's slice below)
    job = load_job(
        REPO / "jobs" / "demo.yaml",
        [f"run_dir={tmp_path / 'demo'}", "corpus.inputs.0.limit=null", "corpus.quality=null"],
    )
    stats = prepare.STAGE.run(job, show_progress=False)
    assert stats["documents_read"] == 1866
    assert stats["duplicates"] == 9  # the repeated legal-footer pages
    # boilerplate pages made of the same few lines (Jaccard 0.45 and up to each other) share LSH bands:
    # 14 bands of 8 find a pair at 0.5 about 5% of the time, and there are ~1,800 such pairs; no
    # chapter or documentation page is taken for a copy
    assert stats["rejected"] == {"near_duplicate": 13}
    assert {s for s, c in stats["sources"].items() if "near_duplicate" in c} == {"noise-boilerplate"}
    assert stats["kept_total"] == 1844
    assert set(stats["sources"]) == {"kjv", "python-docs", "noise-gibberish", "noise-boilerplate", "noise-ocr"}


def test_demo_job_reads_its_slice_of_the_bundled_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    job = load_job(REPO / "jobs" / "demo.yaml", [f"run_dir={tmp_path / 'demo'}"])
    stats = prepare.STAGE.run(job, show_progress=False)
    assert stats["documents_read"] == 3 * 160  # limit: 160 per file
    assert stats["kept_total"] + stats["duplicates"] + stats["rejected_total"] == 480

    # prepare's filters on the main split: noise out, real text in (the noise floor takes the OCR
    # garbage and short gibberish later, at selection)
    dropped = {src: sum(n.values()) for src, n in stats["dropped_by_split"]["main"].items()}
    in_main = {src: c.get("kept_main", 0) + dropped.get(src, 0) for src, c in stats["sources"].items()}
    for real in ("kjv", "python-docs"):
        assert dropped.get(real, 0) <= 0.05 * in_main[real]
    assert dropped["noise-boilerplate"] >= 0.95 * in_main["noise-boilerplate"]
    main_ids = set(pl.read_parquet(str(tmp_path / "demo" / "docs" / "main" / "*.parquet"))["id"])
    noise = pl.read_parquet(SAMPLE / "noise.parquet").head(160)
    kept_gibberish = noise.filter(pl.col("id").is_in(list(main_ids)) & (pl.col("source") == "noise-gibberish"))
    assert all(len(text.split()) < 50 for text in kept_gibberish["text"])  # too short to judge: min_words


def rebuilt(script: str, output: str, tmp_path, monkeypatch) -> bytes:
    """What a data/ build script writes now, run in a scratch folder that links the sample."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(script, REPO / "data" / f"{script}.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setattr(build, "HERE", tmp_path)
    (tmp_path / "sample").symlink_to(REPO / "data" / "sample")
    build.main()
    return (tmp_path / "eval" / output).read_bytes()


def test_bundled_eval_task_is_what_its_build_script_writes(tmp_path, monkeypatch):
    import json

    built = rebuilt("build_eval_task", "bundled-cloze.jsonl", tmp_path, monkeypatch)
    assert built == (REPO / "data" / "eval" / "bundled-cloze.jsonl").read_bytes()
    items = [json.loads(line) for line in (REPO / "data" / "eval" / "bundled-cloze.jsonl").read_text().splitlines()]
    assert len(items) == 200 and all(len(i["choices"]) == 4 and 0 <= i["label"] < 4 for i in items)
    assert {i["source"] for i in items} == {"kjv", "python-docs"}


def test_clean_heldout_corpus_is_its_build_scripts_and_apart_from_what_the_demo_reads(tmp_path, monkeypatch):
    import json

    bundled = REPO / "data" / "eval" / "clean-heldout.jsonl"
    assert rebuilt("build_heldout", "clean-heldout.jsonl", tmp_path, monkeypatch) == bundled.read_bytes()
    rows = [json.loads(line) for line in bundled.read_text().splitlines()]
    assert len(rows) == 24 and {r["source"] for r in rows} == {"kjv", "python-docs"}
    read_by_demo = set()
    for name in ("kjv", "python-docs", "noise"):
        read_by_demo |= set(pl.read_parquet(SAMPLE / f"{name}.parquet")["id"][:160])
    cloze = {json.loads(line)["context"] for line in (REPO / "data" / "eval" / "bundled-cloze.jsonl").open()}
    for r in rows:
        assert r["id"] not in read_by_demo
        assert not any(c in r["text"] for c in cloze)


def test_demo_job_compares_its_two_students_in_the_report(monkeypatch):
    """The demo's last steps: both students, two seeds each, evaluated on the clean held-out corpus and
    the offline task, so its report gains the comparison table (the rendering is tested on a tiny run in
    tests/evaluation and tests/pipeline)."""
    from miniplm.evaluation.evaluate import targets
    from miniplm.pipeline.plan import steps

    monkeypatch.chdir(REPO)
    job = load_job(REPO / "jobs" / "demo.yaml")
    students = [
        "student-selected",
        "student-selected.seed1",
        "student-random",
        "student-random.seed1",
        "student-random-filtered",
        "student-random-filtered.seed1",
    ]
    assert [s.name for s in steps(job)][-7:] == [*(f"train/{name}" for name in students), "eval"]
    # the comparison's "trained on" column tells the two random controls apart
    assert [(t.name, t.trained_on) for t in targets(job)] == [
        (name, name.removeprefix("student-").removesuffix(".seed1")) for name in students
    ]
    sets = {t.name: t.input for t in job.tokenize}
    assert (sets["random"], sets["random-filtered"]) == ("selected-random", "selected-random-filtered")
    assert job.select.random_baseline == "both" and job.select.keep_token_fraction == 0.5
    assert job.proxy.use == "beside"  # the demo's selection is the LMs'; the proxy's is printed beside it
    assert "selected-proxy" not in sets.values()  # and no student trains on it
    assert len({(s.preset, s.steps, s.batch_tokens, s.lr, s.heldout) for s in job.students}) == 1
    assert not job.eval.heldout and job.eval.tasks == ["bundled_cloze"]
    assert [c.path for c in job.eval.corpora] == ["data/eval/clean-heldout.jsonl"]
    for path in job.eval.task_paths:
        assert (REPO / path / "bundled_cloze.yaml").exists()


def test_paper_jobs_follow_the_papers_recipe(monkeypatch):
    monkeypatch.chdir(REPO)
    demo = load_job(REPO / "jobs" / "paper-demo.yaml")
    assert demo.score.unit == "instance" and demo.select.keep_token_fraction == 0.5
    assert all(t.seq_len == demo.score.max_length for t in demo.tokenize if t.input.startswith("selected"))
    trained_on = {s.name: {t.name: t.input for t in demo.tokenize}[s.tokens] for s in demo.students}
    assert trained_on == {
        "student-selected": "selected",
        "student-random": "selected-random",
        "student-random-filtered": "selected-random-filtered",
    }
    assert len({(s.preset, s.steps, s.batch_tokens, s.lr) for s in demo.students}) == 1
    from miniplm.config import read_job  # the Pile is not here: the schema and the stages' checks, not the inputs
    from miniplm.stages import check_job

    pile = read_job(REPO / "jobs" / "paper-pile-qwen.yaml")
    check_job(pile)
    assert pile.score.unit == "instance" and pile.score.max_length == 1024 and pile.select.keep_token_fraction == 0.5
    assert pile.corpus.inputs[0].source_field == "meta.pile_set_name"
    assert [t.seq_len for t in pile.tokenize if t.input == "selected"] == [1024]


def test_paper_job_trains_vanilla_kd_for_the_papers_compute_matched_steps(monkeypatch):
    """The paper's vanilla-KD baseline beside each MiniPLM student: the same size and settings, online
    forward KL at weight 0.5 on a random selection of the same budget, for the paper's step counts."""
    monkeypatch.chdir(REPO)
    from miniplm.config import read_job
    from miniplm.stages import check_job

    pile = read_job(REPO / "jobs" / "paper-pile-qwen.yaml")
    check_job(pile)
    students = {s.name: s for s in pile.students}
    inputs = {t.name: t.input for t in pile.tokenize}
    for size, steps in (("200m", 20_000), ("500m", 45_000), ("1.2b", 65_000)):
        miniplm, vanilla = students[f"qwen-{size}"], students[f"qwen-{size}-vanilla-kd"]
        assert vanilla.steps == steps and miniplm.kd is None
        assert (vanilla.kd.source, vanilla.kd.loss, vanilla.kd.weight, vanilla.kd.teacher) == (
            "online",
            "forward_kl",
            0.5,
            "teacher",
        )
        assert (inputs[miniplm.tokens], inputs[vanilla.tokens]) == ("selected", "selected-random")
        settings = {"name", "tokens", "steps", "kd"}
        assert vanilla.model_dump(exclude=settings) == miniplm.model_dump(exclude=settings)


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
    assert methods == {
        "random": ("random", None),
        "selected": ("selected", None),
        "vanilla-kd": ("random", ("online", "forward_kl", None)),
        "offline-kd": ("random", ("offline", "forward_kl", "random-top32")),
        "offline-reverse-kl": ("random", ("offline", "reverse_kl", "random-top32")),
        "selected-kd": ("selected", ("offline", "forward_kl", "selected-top32")),
    }
    assert len({(s.preset, s.steps, s.batch_tokens, s.lr) for s in job.students}) == 1
    assert all(s.kd.weight == 0.5 for s in job.students if s.kd)
    assert {t.name: t.tokens for t in job.teacher_logits} == {"random-top32": "random", "selected-top32": "selected"}
    names = [s.name for s in steps(job)]
    assert names.index("teacher-logits/random-top32") < names.index("train/offline-kd") and names[-1] == "eval"
    assert {t.name for t in targets(job)} == set(students)


def test_kd_compare_job_trains_every_method_at_one_shape_and_budget_with_three_seeds(monkeypatch):
    """The comparison of every method: one student per method, the same shape (the pruned student is cut
    to the shape the others are built with), steps and tokens, at least 3 seeds, KD read from log-probs
    stored for the student's own token set, the hybrid's set half teacher-written text."""
    import json

    from miniplm.evaluation.evaluate import targets
    from miniplm.models.presets import PRESETS

    monkeypatch.chdir(REPO)
    job = load_job(REPO / "jobs" / "kd-compare.yaml")
    sets = {t.name: t for t in job.tokenize}
    methods = {
        s.name: (
            sets[s.tokens].input if sets[s.tokens].mix is None else "mix",
            s.init,
            s.kd and (s.kd.source, s.kd.loss),
        )
        for s in job.students
    }
    kd = ("offline", "forward_kl")
    assert methods == {
        "scratch": ("selected-random", None, None),
        "miniplm": ("selected", None, None),
        "miniplm-proxy": ("selected-proxy", None, None),
        "scratch-filtered": ("selected-random-filtered", None, None),
        "vanilla-kd": ("selected-random", None, kd),
        "seqkd": ("generated/seqkd", None, None),
        "miniplm-kd": ("selected", None, kd),
        "hybrid": ("mix", None, kd),
        "pruned-kd": ("selected-random", "pruned", kd),
    }
    assert sets["hybrid"].mix == {"written": 0.5, "random": 0.5} and sets["written"].input == "generated/seqkd"
    assert len({(s.steps, s.batch_tokens, s.lr, s.micro_batch) for s in job.students}) == 1
    shape = json.loads((REPO / "jobs" / "configs" / "kd-compare-student.json").read_text())
    assert {s.config for s in job.students if s.init is None} == {"jobs/configs/kd-compare-student.json"}
    target = PRESETS[job.prune[0].target.preset]
    assert all(shape[k] == target[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    logits = {t.name: t.tokens for t in job.teacher_logits}
    assert all(logits[s.kd.logits] == s.tokens for s in job.students if s.kd)
    assert job.eval.seeds >= 3 and job.eval.heldout
    assert job.select.random_baseline == "both"  # the raw control and the one from the filtered pool
    assert job.proxy.use == "beside"  # the LM selection and the proxy's side by side
    assert len(targets(job)) == 9 * job.eval.seeds

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from miniplm.corpus import prepare
from miniplm.job import load_job
from miniplm.rundir import RunDir
from miniplm.selection import cut, rank, select
from miniplm.workers import Worker
from tests.conftest import write_jsonl


def make_scored_run(tmp_path: Path, name="run", noisy=(), extra=None, **select_cfg):
    """A prepared corpus of 200 documents in 4 main shards and synthetic scores with known
    values: document i has difference score i / 100 (teacher -1 per token, -4 for the `noisy` ids:
    the same score, far below the rest). `extra`: more keys of the job."""
    docs = tmp_path / "docs.jsonl"
    if not docs.exists():
        write_jsonl(
            docs,
            [
                {"id": f"doc-{i:03d}", "text": f"text of document {i} " + "w" * (i % 7), "src": ["web", "books"][i % 2]}
                for i in range(200)
            ],
        )
    import yaml

    job_path = tmp_path / f"{name}.yaml"
    job_path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp_path / name),
                "seed": 3,
                "corpus": {
                    "inputs": [{"path": str(docs), "format": "jsonl", "id_field": "id", "source_field": "src"}],
                    "docs_per_shard": 50,
                    "reference_fraction": 0.0,
                    "heldout_fraction": 0.0,
                },
                "select": {"report_examples": 5, **select_cfg},
                **(extra or {}),
            }
        )
    )
    job = load_job(job_path)
    prepare.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    (rd.root / "scores").mkdir()
    for k, shard in enumerate(rd.doc_shards("main")):
        d = pl.read_parquet(shard)
        i = d["id"].str.slice(4).cast(pl.Int64)
        n = i % 13 + 1
        teacher = pl.when(pl.col("id").is_in(list(noisy))).then(-4.0).otherwise(-1.0)
        d.select("id", "source").with_columns(
            n_tokens=n, teacher_logprob=teacher * n, reference_logprob=(teacher - i / 100) * n
        ).write_parquet(rd.root / "scores" / f"shard-{k:05d}.parquet")
    rd.start_stage("score", "synthetic", outputs=["scores"])
    rd.finish_stage("score", {})  # records what it wrote, as the score stage does
    return job


def run_select(job, worker: Worker = Worker(), *, force: bool = False, show_progress: bool = False):
    """rank, then select, as `miniplm run` chains them."""
    rank.STAGE.run(job, force=force, show_progress=show_progress)
    return select.STAGE.run(job, worker, force=force, show_progress=show_progress)


def selected_rows(run_dir) -> pl.DataFrame:
    files = sorted((Path(run_dir) / "selected").glob("shard-*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files])


def test_difference_keeps_the_top_half_with_text_and_score(tmp_path):
    job = make_scored_run(tmp_path)
    counts = run_select(job, show_progress=False)
    assert counts["scored"] == 200 and counts["kept"] == 100
    assert counts["kept"] + sum(counts["dropped"].values()) == counts["scored"]
    rows = selected_rows(job.run_dir)
    assert sorted(rows["id"]) == [f"doc-{i:03d}" for i in range(100, 200)]
    assert rows.columns == ["id", "text", "source", "score"]
    assert rows.filter(pl.col("id") == "doc-150")["score"][0] == pytest.approx(1.5)
    original = pl.read_parquet(RunDir(job.run_dir).doc_shards("main")[3])
    shard3 = pl.read_parquet(Path(job.run_dir) / "selected" / "shard-00003.parquet")
    assert shard3["id"].to_list() == [i for i in original["id"] if i in set(shard3["id"])]  # original order
    assert shard3["text"].to_list() == original.filter(pl.col("id").is_in(shard3["id"].to_list()))["text"].to_list()

    import datasets

    files = [str(p) for p in sorted((Path(job.run_dir) / "selected").glob("shard-*.parquet"))]
    assert datasets.load_dataset("parquet", data_files=files, split="train").num_rows == 100


def test_noise_filter_and_source_cap_counts_add_up(tmp_path):
    job = make_scored_run(tmp_path, min_tokens=3, min_teacher_logprob=-0.5, keep_fraction=0.5)
    counts = run_select(job, show_progress=False)
    # teacher is -1 per token everywhere: the noise filter drops all (after the length filter)
    assert counts["dropped"]["too_few_tokens"] == sum(1 for i in range(200) if i % 13 + 1 < 3)
    assert counts["dropped"]["low_teacher_logprob"] == 200 - counts["dropped"]["too_few_tokens"]
    assert counts["kept"] == 0 and selected_rows(job.run_dir).height == 0

    capped = make_scored_run(tmp_path, name="capped", max_source_fraction=0.3, keep_fraction=0.5)
    counts = run_select(capped, show_progress=False)
    rows = selected_rows(capped.run_dir)
    assert counts["kept"] == 60 == rows.height  # 30 per source at most, two sources
    assert dict(rows.group_by("source").len().iter_rows()) == {"web": 30, "books": 30}
    assert counts["dropped"]["source_cap"] == 140 and counts["dropped"]["below_cut"] == 0


def test_same_ids_on_rerun_and_with_two_workers(tmp_path):
    for strategy in ("difference", "difference-sample", "random"):
        one = make_scored_run(tmp_path, name=f"one-{strategy}", strategy=strategy, keep_fraction=0.3)
        run_select(one, show_progress=False)
        two = make_scored_run(tmp_path, name=f"two-{strategy}", strategy=strategy, keep_fraction=0.3)
        assert run_select(two, Worker(1, 2), show_progress=False) is None
        assert run_select(two, Worker(0, 2), show_progress=False)["kept"] == 60
        ids_one, ids_two = selected_rows(one.run_dir)["id"].to_list(), selected_rows(two.run_dir)["id"].to_list()
        assert ids_one == ids_two and len(ids_one) == 60
        shutil.rmtree(Path(one.run_dir) / "selected")
        run_select(one, force=True, show_progress=False)
        assert selected_rows(one.run_dir)["id"].to_list() == ids_one


def _written(run_dir) -> dict[str, bytes]:
    root = Path(run_dir)
    folders = ("ranked", "selection", "selected", "selected-random", "selected-random-filtered")
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in folders
        for p in sorted((root / folder).rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".arrow", ".npy", ".json")
    }


def test_rank_and_select_stopped_in_a_task_resume_to_the_same_bytes(tmp_path, monkeypatch):
    settings = {"keep_fraction": 0.3, "random_baseline": "both", "units_per_run": 60}  # four runs
    clean = make_scored_run(tmp_path, name="clean", **settings)
    run_select(clean)
    stopped = make_scored_run(tmp_path, name="stopped", **settings)
    real_write_run, real_apply = rank.write_run, cut.apply

    def write_run(rd, index, *args):
        if index == 2:
            raise RuntimeError("killed")
        real_write_run(rd, index, *args)

    monkeypatch.setattr(rank, "write_run", write_run)
    with pytest.raises(RuntimeError, match="killed"):
        rank.STAGE.run(stopped, show_progress=False)
    monkeypatch.setattr(rank, "write_run", real_write_run)
    assert rank.STAGE.run(stopped, show_progress=False)["runs"] == 4

    calls = []

    def apply(*args):
        calls.append(1)
        if len(calls) == 3:  # the third shard of four: after the cut and two shards
            raise RuntimeError("killed")
        return real_apply(*args)

    monkeypatch.setattr(cut, "apply", apply)
    with pytest.raises(RuntimeError, match="killed"):
        select.STAGE.run(stopped, show_progress=False)
    assert RunDir(stopped.run_dir).cut.exists() and len(list((Path(stopped.run_dir) / "selected").glob("*"))) == 2
    monkeypatch.setattr(cut, "apply", real_apply)
    select.STAGE.run(stopped, show_progress=False)
    assert _written(stopped.run_dir) == _written(clean.run_dir) != {}


def test_report_survives_odd_source_names(tmp_path):
    job = make_scored_run(tmp_path)
    scores = Path(job.run_dir) / "scores" / "shard-00000.parquet"
    pl.read_parquet(scores).with_columns(source=pl.lit("$\\frac <b>&$5")).write_parquet(scores)
    RunDir(job.run_dir).finish_stage("score", {})  # as if score had written these
    run_select(job, show_progress=False)
    page = (Path(job.run_dir) / "report" / "index.html").read_text()
    assert "$\\frac &lt;b&gt;&amp;$5" in page and "<b>&$5" not in page


def test_report_files_and_rebuild(tmp_path):
    job = make_scored_run(tmp_path)
    run_select(job, show_progress=False)
    report = Path(job.run_dir) / "report"
    names = sorted(p.name for p in report.iterdir())
    assert names == [
        "difference.png",
        "index.html",
        "lengths.png",
        "sources.png",
        "summary.json",
        "teacher_vs_reference.png",
    ]
    for png in report.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    summary = json.loads((report / "summary.json").read_text())
    assert summary["kept"] == 100 and summary["cut_score"] == pytest.approx(1.0)
    assert {s["source"]: s["kept"] for s in summary["sources"]} == {"web": 50, "books": 50}
    page = (report / "index.html").read_text()
    assert page.count("<img") == 4 and page.count("data:image/png;base64,") == 4
    assert page.count('class="examples"') == 3 and "doc-199" in page and "text of document 199" in page
    (report / "index.html").unlink()
    from miniplm.report.page import assemble

    select.STAGE.report(job, RunDir(job.run_dir))  # as `miniplm report` rebuilds it
    assert assemble(RunDir(job.run_dir)) == report / "index.html" and (report / "index.html").exists()


CHROMIUM = shutil.which("chromium") and shutil.which("chromedriver")


@pytest.mark.skipif(
    not CHROMIUM, reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)
def test_report_opens_in_headless_chromium_with_every_image(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    job = make_scored_run(tmp_path)
    run_select(job, show_progress=False)
    page = (Path(job.run_dir) / "report" / "index.html").resolve()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(page.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        tables = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => [t.className, t.rows.length])"
        )
    finally:
        driver.quit()
    assert len(images) == 4 and all(done and w > 200 and h > 200 for done, w, h in images), images
    assert [c for c, _ in tables] == ["counts", "sources", "drops", "drop-reasons", "examples", "examples", "examples"]
    assert all(rows > 1 for _, rows in tables)


def test_cli_select_and_report(tmp_path, capsys):
    from miniplm.cli import main

    make_scored_run(tmp_path, keep_fraction=0.25)
    assert main(["rank", str(tmp_path / "run.yaml"), "-q"]) == 0
    assert main(["select", str(tmp_path / "run.yaml"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "kept 50 of 200 documents" in out and "below_cut 150" in out and "report/index.html" in out
    assert main(["report", str(tmp_path / "run.yaml")]) == 0
    assert "index.html" in capsys.readouterr().out


def test_select_needs_finished_scores(tmp_path):
    from miniplm.errors import StageError

    job = make_scored_run(tmp_path)
    RunDir(job.run_dir).update_stage("score", state="running")
    with pytest.raises(StageError, match="run `miniplm score` first"):
        run_select(job, show_progress=False)


def test_a_deleted_or_truncated_shard_stops_select_naming_it_and_status_says_damaged(tmp_path, capsys):
    from miniplm.cli import main
    from miniplm.errors import StageError

    job = make_scored_run(tmp_path)
    scores = Path(job.run_dir) / "scores"
    (scores / "shard-00002.parquet").unlink()
    with pytest.raises(
        StageError,
        match=r"scores/shard-00002\.parquet: missing \(score wrote it\); run "
        r"`miniplm score --force` to redo score",
    ):
        run_select(job, show_progress=False)
    assert not (Path(job.run_dir) / "selected").exists()
    # (hub ids that status never loads, so that the job has a score step)
    assert main(["status", str(tmp_path / "run.yaml"), "teacher.model=org/t", "reference.model=org/r"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^score +damaged", out, re.M) and re.search(r"^prepare +done", out, re.M)
    assert "score: damaged: " in out and "scores/shard-00002.parquet: missing; run `miniplm score --force`" in out

    job = make_scored_run(tmp_path, name="cut")
    shard = Path(job.run_dir) / "docs" / "main" / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # a copy that stopped short
    with pytest.raises(
        StageError,
        match=r"docs/main/shard-00001\.parquet: damaged: .* bytes where prepare "
        r"wrote .*; run `miniplm prepare --force`",
    ):
        run_select(job, show_progress=False)

    job = make_scored_run(tmp_path, name="stray")
    shutil.copy(scores / "shard-00000.parquet", Path(job.run_dir) / "scores" / "shard-00009.parquet")
    with pytest.raises(StageError, match=r"scores/shard-00009\.parquet: not written by score in this run"):
        run_select(job, show_progress=False)


def test_nothing_kept_is_warned_about(tmp_path, capsys):
    from miniplm.cli import main

    make_scored_run(tmp_path)
    assert main(["rank", str(tmp_path / "run.yaml"), "-q", "select.min_teacher_logprob=0.5"]) == 0
    assert main(["select", str(tmp_path / "run.yaml"), "-q", "select.min_teacher_logprob=0.5"]) == 0
    captured = capsys.readouterr()
    assert "kept 0 of 200 documents" in captured.out
    assert (
        "miniplm: warning: select: nothing was kept of 200 scored documents (low_teacher_logprob 200)" in captured.err
    )


def test_past_the_sample_size_plots_come_from_a_sample_and_the_counts_stay_exact(tmp_path, monkeypatch):
    monkeypatch.setattr("miniplm.selection.report.SAMPLE_UNITS", 50)
    job = make_scored_run(tmp_path, keep_fraction=0.25)
    run_select(job)
    report = Path(job.run_dir) / "report"
    page = (report / "index.html").read_text()
    sampled = re.search(r"a sample of (\d+) of 200 documents", page)
    assert sampled and 20 <= int(sampled.group(1)) <= 90  # each document drawn with probability 1/4
    summary = json.loads((report / "summary.json").read_text())
    assert (summary["scored"], summary["kept"]) == (200, 50)
    assert sum(s["scored"] for s in summary["sources"]) == 200

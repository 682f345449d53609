"""The proxy stage on a corpus whose (synthetic) LM scores its words carry, and on real tiny models."""

import json

import numpy as np
import polars as pl
import pytest
import yaml

from miniplm.compute import record
from miniplm.corpus import prepare
from miniplm.errors import ConfigError, StageError
from miniplm.job import load_job
from miniplm.models.loading import load_tokenizer
from miniplm.models.text_tokens import token_ids
from miniplm.proxy import proxy
from miniplm.proxy.files import holdout, scores_shard
from miniplm.rundir import RunDir
from miniplm.scoring import score
from miniplm.scoring.sample import in_sample, rates, source_counts
from miniplm.selection import rank, select
from miniplm.workers import Worker
from tests.conftest import write_jsonl

GOOD = "the river and the stone of bread with light in morning".split()
BAD = "the zebra and the quartz of vortex with plinth in jumble".split()
NOISE = "xq vv kkz qqp zzt wwx".split()


def write_corpus(path, n=600, seed=0):
    """Documents of three sources: web and books mix two vocabularies, noise is gibberish."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        source = ["web", "books", "noise"][i % 3] if i % 3 < 2 or i % 30 == 2 else ["web", "books"][i % 2]
        words = NOISE if source == "noise" else GOOD if rng.uniform() < 0.5 else BAD
        share = rng.uniform()
        text = " ".join(rng.choice(GOOD if rng.uniform() < share else words) for _ in range(rng.integers(15, 40)))
        rows.append({"id": f"d{i:04d}", "text": text, "src": source})
    write_jsonl(path, rows)


def job_file(tmp_path, tiny_models, *, proxy_cfg, select_cfg=None, name="job", docs_per_shard=150):
    docs = tmp_path / "docs.jsonl"
    if not docs.exists():
        write_corpus(docs)
    spec = {
        "run_dir": str(tmp_path / name),
        "seed": 5,
        "corpus": {
            "inputs": [{"path": str(docs), "format": "jsonl", "id_field": "id", "source_field": "src"}],
            "docs_per_shard": docs_per_shard,
            "reference_fraction": 0.0,
            "heldout_fraction": 0.0,
            "quality": None,
            "near_duplicates": None,
        },
        "teacher": {"model": tiny_models["teacher"]},
        "reference": {"model": tiny_models["reference"]},
        "score": {"max_length": 64, "batch_tokens": 512},
        "proxy": proxy_cfg,
        "select": {"keep_fraction": 0.5, **(select_cfg or {})},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_job(path)


def synthetic_scores(job, only_sample: bool) -> dict[str, float]:
    """Write a finished score stage: per token, teacher -1 (-4 for noise) and difference the share of
    GOOD words; n_tokens counted by the teacher's tokenizer. Returns each id's difference."""
    rd = RunDir(job.run_dir)
    tokenizer = load_tokenizer(job.teacher.model)
    source_rates = rates(source_counts(rd), job.proxy)
    truth = {}
    rd.scores.mkdir()
    for k, path in enumerate(rd.doc_shards("main")):
        docs = pl.read_parquet(path)
        n = np.array([len(t) for t in token_ids(tokenizer, docs["text"].to_list())])
        good = np.array([sum(w in GOOD[1::2] for w in t.split()) / len(t.split()) for t in docs["text"]])
        teacher = np.where(docs["source"] == "noise", -4.0, -1.0)
        truth |= dict(zip(docs["id"].to_list(), good.tolist()))
        frame = docs.select("id", "source").with_columns(
            n_tokens=pl.Series(n),
            doc_tokens=pl.Series(n),
            teacher_logprob=teacher * n,
            reference_logprob=(teacher - good) * n,
        )
        if only_sample:
            frame = frame.filter(pl.Series(in_sample(frame["id"], frame["source"], source_rates, job.seed)))
        frame.write_parquet(rd.score_shard(k))
    rd.start_stage("score", "synthetic", outputs=["scores"])
    rd.finish_stage("score", {"flops": record(teacher=1000.0, reference=250.0)})
    return truth


def proxy_rows(job) -> pl.DataFrame:
    rd = RunDir(job.run_dir)
    return pl.concat([pl.read_parquet(scores_shard(rd, i)) for i in range(len(rd.doc_shards("main")))])


@pytest.mark.parametrize("use", ["instead", "beside"])
def test_proxy_scores_rank_like_the_lm_scores_and_the_noise_floor_drops_the_noise(tiny_models, tmp_path, use):
    job = job_file(tmp_path, tiny_models, proxy_cfg={"use": use, "sample_fraction": 0.3, "alpha": 0.1})
    prepare.STAGE.run(job, show_progress=False)
    truth = synthetic_scores(job, only_sample=use == "instead")
    counts = proxy.STAGE.run(job, show_progress=False)

    rows = proxy_rows(job)
    docs = pl.concat([pl.read_parquet(p) for p in RunDir(job.run_dir).doc_shards("main")])
    assert rows["id"].to_list() == docs["id"].to_list()  # every unit, shard by shard, in order
    lm_scores = pl.read_parquet(str(RunDir(job.run_dir).scores / "*.parquet"))
    sampled = in_sample(docs["id"], docs["source"], rates(source_counts(RunDir(job.run_dir)), job.proxy), job.seed)
    assert (rows["score_source"] == "lm").to_numpy().tolist() == sampled.tolist()
    # the sample's rows are the LM's, exactly; the others the model's
    lm_rows = rows.filter(pl.col("score_source") == "lm").drop("score_source")
    assert lm_rows.equals(lm_scores.filter(pl.col("id").is_in(lm_rows["id"].implode())).select(lm_rows.columns))
    assert counts["lm"] == int(sampled.sum()) and counts["proxy"] == docs.height - int(sampled.sum())

    predicted = rows.filter(pl.col("score_source") == "proxy")
    difference = (predicted["teacher_logprob"] - predicted["reference_logprob"]) / predicted["n_tokens"]
    truths = [truth[i] for i in predicted["id"]]
    assert np.corrcoef(np.argsort(np.argsort(difference)), np.argsort(np.argsort(truths)))[0, 1] > 0.8
    assert counts["spearman_difference"] > 0.8 and counts["held_out"] >= 10
    assert counts["kept_overlap"] > 0.7
    assert pl.read_parquet(holdout(RunDir(job.run_dir))).height == counts["held_out"]

    # rank and select read the proxy's scores as they read LM scores
    rank.STAGE.run(job, show_progress=False)
    result = select.STAGE.run(job, show_progress=False)
    chosen = result if use == "instead" else result["select-proxy"]
    assert chosen["kept"] > 0
    noise = next(r for r in chosen["drops"] if r["source"] == "noise")
    assert noise["noise_floor"] >= 0.95 * noise["documents"]
    if use == "beside":
        folder = RunDir(job.run_dir).root / "selected-proxy"
        kept = pl.read_parquet(str(folder / "*.parquet"))
        assert kept.height == chosen["kept"] and "score" in kept.columns
        assert not (RunDir(job.run_dir).root / "selected-proxy-random").exists()


def test_flops_and_what_scoring_everything_would_cost(tiny_models, tmp_path):
    from miniplm.lookups import reference_model
    from miniplm.models.flops import model_flops
    from miniplm.scoring.cost import scoring_flops

    for use in ("instead", "beside"):
        job = job_file(tmp_path, tiny_models, proxy_cfg={"use": use, "sample_fraction": 0.3}, name=use)
        prepare.STAGE.run(job, show_progress=False)
        synthetic_scores(job, only_sample=use == "instead")
        counts = proxy.STAGE.run(job, show_progress=False)
        rows = proxy_rows(job)
        n = rows["n_tokens"].to_numpy()
        cost = lambda m, units: scoring_flops(units, "document", 64, 0, model_flops(m))  # noqa: E731
        everything = cost(job.teacher.model, n) + cost(reference_model(job), n)
        assert counts["scoring_everything_flops"] == pytest.approx(everything)
        by = counts["flops"]["by"]
        assert by["fit"] > 0 and by["predict"] > 0
        if use == "instead":  # the score stage scored the sample: its FLOPs are the labels'
            assert counts["labels_flops"] == 1250.0 and set(by) == {"fit", "predict"}
        else:  # the LMs scored everything: the proxy charges itself the sample's share
            lm = (rows["score_source"] == "lm").to_numpy()
            assert by["labels_teacher"] == pytest.approx(cost(job.teacher.model, n[lm]))
            assert counts["labels_flops"] == pytest.approx(by["labels_teacher"] + by["labels_reference"])


def test_two_workers_write_what_one_writes(tiny_models, tmp_path):
    jobs = [job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.3}, name=name) for name in ("one", "two")]
    for job in jobs:
        prepare.STAGE.run(job, show_progress=False)
        synthetic_scores(job, only_sample=True)
    proxy.STAGE.run(jobs[0], show_progress=False)
    assert proxy.STAGE.run(jobs[1], Worker(1, 2), show_progress=False) is None  # the other worker's shards remain
    proxy.STAGE.run(jobs[1], Worker(0, 2), show_progress=False)
    assert proxy_rows(jobs[0]).equals(proxy_rows(jobs[1]))


def test_a_changed_model_setting_makes_the_proxy_out_of_date(tiny_models, tmp_path):
    job = job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.3})
    prepare.STAGE.run(job, show_progress=False)
    synthetic_scores(job, only_sample=True)
    proxy.STAGE.run(job, show_progress=False)
    changed = job.model_copy(update={"proxy": job.proxy.model_copy(update={"alpha": 3.0})})
    with pytest.raises(ConfigError, match="proxy stage there ran with a different config"):
        proxy.STAGE.run(changed, show_progress=False)
    assert proxy.STAGE.run(changed, force=True, show_progress=False)["units"] == proxy_rows(job).height
    # the sample decides which units the LMs score: a new one makes the scores out of date too
    from miniplm.stages import stage_config_hash

    resampled = job.model_copy(update={"proxy": job.proxy.model_copy(update={"sample_fraction": 0.4})})
    assert stage_config_hash(job, "score", score.sample_setting(job)) != stage_config_hash(
        resampled, "score", score.sample_setting(resampled)
    )


def test_too_small_a_sample_a_source_left_out_and_no_scores_are_clear_errors(tiny_models, tmp_path):
    small = job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.02, "min_source_units": 1}, name="small")
    prepare.STAGE.run(small, show_progress=False)
    synthetic_scores(small, only_sample=True)
    with pytest.raises(ConfigError, match=r"at least 40 .* raise proxy.sample_fraction \(now 0.02\)"):
        proxy.STAGE.run(small, show_progress=False)

    # noise has 20 documents: at a 2% rate and no floor per source, a seed that draws none of them
    missing = job_file(
        tmp_path,
        tiny_models,
        proxy_cfg={"use": "beside", "sample_fraction": 0.02, "min_source_units": 1},
        name="missing",
    )
    prepare.STAGE.run(missing, show_progress=False)
    synthetic_scores(missing, only_sample=False)
    rd = RunDir(missing.run_dir)
    docs = pl.concat([pl.read_parquet(p) for p in rd.doc_shards("main")])
    noise = docs["source"] == "noise"
    seed = next(
        s
        for s in range(100)
        if not in_sample(docs["id"], docs["source"], rates(source_counts(rd), missing.proxy), s)[noise.to_numpy()].any()
    )
    with pytest.raises(ConfigError, match="source 'noise' .* has no unit in the sample.*proxy.min_source_units"):
        proxy.STAGE.run(missing.model_copy(update={"seed": seed}), show_progress=False)

    unscored = job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.3}, name="unscored")
    prepare.STAGE.run(unscored, show_progress=False)
    with pytest.raises(StageError, match="run `miniplm score` first"):
        proxy.STAGE.run(unscored, show_progress=False)


def test_selected_proxy_needs_the_proxy_beside(tiny_models, tmp_path):
    path = tmp_path / "job.yaml"
    spec = {
        "run_dir": str(tmp_path / "run"),
        "corpus": {"inputs": [{"path": str(write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])), "format": "jsonl"}]},
        "teacher": {"model": tiny_models["teacher"]},
        "reference": {"model": tiny_models["reference"]},
        "proxy": {"sample_fraction": 0.3},
        "tokenize": [{"name": "p", "input": "selected-proxy"}],
    }
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="selected-proxy .* needs `proxy: {use: beside}`"):
        load_job(path)
    spec["proxy"]["use"] = "beside"
    path.write_text(yaml.safe_dump(spec))
    assert load_job(path).tokenize[0].input == "selected-proxy"


def test_the_score_stage_scores_only_the_sample_when_the_proxy_replaces_it(tiny_models, tmp_path):
    job = job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.1, "min_source_units": 5})
    prepare.STAGE.run(job, show_progress=False)
    counts = score.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    docs = pl.concat([pl.read_parquet(p) for p in rd.doc_shards("main")])
    expected = docs.filter(pl.Series(in_sample(docs["id"], docs["source"], rates(source_counts(rd), job.proxy), 5)))
    scored = pl.read_parquet(str(rd.scores / "*.parquet"))
    assert scored["id"].to_list() == expected["id"].to_list() and 0 < scored.height < docs.height
    assert counts["rows"] == scored.height
    proxy.STAGE.run(job, show_progress=False)
    rows = proxy_rows(job)
    assert rows.height == docs.height and (rows["score_source"] == "lm").sum() == scored.height
    # the proxy counts tokens as the score stage does
    tokenizer = load_tokenizer(job.teacher.model)
    assert rows["n_tokens"].to_list() == [len(t) for t in token_ids(tokenizer, docs["text"].to_list())]


def test_instances_are_predicted_as_the_score_stage_packs_them(tiny_models, tmp_path):
    from miniplm.scoring.instances import Boundaries

    job = job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.3})
    job = job.model_copy(update={"score": job.score.model_copy(update={"unit": "instance", "max_length": 32})})
    prepare.STAGE.run(job, show_progress=False)
    score.STAGE.run(job, show_progress=False)
    counts = proxy.STAGE.run(job, show_progress=False)
    rows = proxy_rows(job)
    rd = RunDir(job.run_dir)
    tokenizer = load_tokenizer(job.teacher.model)
    packed = [
        score.tokenize_shard(job, tokenizer, Boundaries.for_tokenizer(tokenizer), i, p)
        for i, p in enumerate(rd.doc_shards("main"))
    ]
    assert rows["id"].to_list() == [i for shard in packed for i in shard.rows["id"]]
    assert rows["input_ids"].to_list() == [list(s) for shard in packed for s in shard.rows["input_ids"]]
    assert rows["n_tokens"].to_list() == [n for shard in packed for n in shard.predicted()]
    scored = pl.read_parquet(str(rd.scores / "*.parquet"))
    assert counts["lm"] == scored.height and 0 < scored.height < rows.height
    rank.STAGE.run(job, show_progress=False)
    assert select.STAGE.run(job, show_progress=False)["kept"] > 0
    kept = pl.read_parquet(str(rd.selected() / "*.parquet"))
    assert {"input_ids", "docs", "text"} <= set(kept.columns)


def test_estimated_token_counts_come_from_characters_and_the_lm_rows_keep_their_own(tiny_models, tmp_path):
    job = job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.3, "token_counts": "estimated"})
    prepare.STAGE.run(job, show_progress=False)
    synthetic_scores(job, only_sample=True)
    proxy.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    fit = json.loads((rd.root / "proxy" / "fit.json").read_text())
    ratio = fit["tokens_per_char"]
    assert set(ratio) == {"web", "books", "noise", "*"} and abs(fit["token_estimate_error"]) < 0.1
    rows = proxy_rows(job)
    docs = pl.concat([pl.read_parquet(p) for p in rd.doc_shards("main")])
    tokenizer = load_tokenizer(job.teacher.model)
    exact = [len(t) for t in token_ids(tokenizer, docs["text"].to_list())]
    guess = [max(round(len(t) * ratio[s]), 1) for t, s in zip(docs["text"], docs["source"])]
    lm = (rows["score_source"] == "lm").to_list()
    assert rows["doc_tokens"].to_list() == [e if s else g for e, g, s in zip(exact, guess, lm)]
    assert sum(guess) == pytest.approx(sum(exact), rel=0.1)

    instances = job.model_copy(update={"score": job.score.model_copy(update={"unit": "instance"})})
    with pytest.raises(ConfigError, match=r"token_counts: estimated .* \(use exact\)"):
        proxy.STAGE.check(instances)


def test_beside_parts_finish_with_two_workers_in_any_order(tiny_models, tmp_path):
    """select-proxy's markers and scratch are its own: the usual part finishing (and clearing its
    own) after another worker got on with the proxy's part loses none of that worker's work."""
    jobs = {}
    for name in ("one", "two"):
        jobs[name] = job_file(
            tmp_path,
            tiny_models,
            proxy_cfg={"use": "beside", "sample_fraction": 0.3},
            select_cfg={"units_per_run": 200},
            name=name,
        )
        prepare.STAGE.run(jobs[name], show_progress=False)
        synthetic_scores(jobs[name], only_sample=False)
        proxy.STAGE.run(jobs[name], show_progress=False)
    one, two = jobs["one"], jobs["two"]
    rank.STAGE.run(one, show_progress=False)
    alone = select.STAGE.run(one, show_progress=False)
    for stage in (rank, select):  # worker 1 first: it finishes its share of both parts before worker 0 ends
        assert stage.STAGE.run(two, Worker(1, 2), show_progress=False) == {
            stage.NAME: None,
            f"{stage.NAME}-proxy": None,
        }
        done = stage.STAGE.run(two, Worker(0, 2), show_progress=False)
    assert done["select"] == alone["select"] and done["select-proxy"] == alone["select-proxy"]
    for folder in ("selected", "selected-proxy"):
        a = pl.read_parquet(str(RunDir(one.run_dir).root / folder / "*.parquet"))
        b = pl.read_parquet(str(RunDir(two.run_dir).root / folder / "*.parquet"))
        assert a.equals(b)


def test_a_shard_with_no_sampled_unit_and_a_non_finite_label(tiny_models, tmp_path):
    job = job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.3})
    prepare.STAGE.run(job, show_progress=False)
    synthetic_scores(job, only_sample=True)
    rd = RunDir(job.run_dir)
    first = pl.read_parquet(rd.score_shard(0))
    first.with_columns(
        teacher_logprob=pl.when(pl.int_range(pl.len()) == 0).then(float("nan")).otherwise(pl.col("teacher_logprob"))
    ).write_parquet(rd.score_shard(0))
    # the last shard's sample is empty, written as score writes an empty shard
    last = len(rd.doc_shards("main")) - 1
    empty = score._assemble(job, score.ShardTokens(last, [], {"id": [], "source": [], "doc_tokens": []}), [], {})
    import pyarrow.parquet as pq

    pq.write_table(empty, rd.score_shard(last))
    rd.update_stage("score", state="running")
    rd.finish_stage("score", {"flops": record(teacher=1.0)})
    counts = proxy.STAGE.run(job, show_progress=False)
    rows = proxy_rows(job)
    assert counts["units"] == rows.height == sum(pl.read_parquet(p).height for p in rd.doc_shards("main"))
    assert rows.filter(pl.col("id").is_in(pl.read_parquet(rd.doc_shards("main")[last])["id"].implode()))[
        "score_source"
    ].unique().to_list() == ["proxy"]
    assert rows["teacher_logprob"].is_nan().sum() == 1  # the NaN label is kept as the LMs gave it, not fitted on


def test_kill_9_mid_stage_and_rerun_writes_the_same_bytes(tiny_models, tmp_path):
    """Shards are written whole: a proxy killed after some of them, run again, leaves exactly what an
    uninterrupted run leaves (nothing time-dependent in its outputs)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    jobs = {
        name: job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.3}, name=name, docs_per_shard=20)
        for name in ("clean", "killed")
    }
    for job in jobs.values():
        prepare.STAGE.run(job, show_progress=False)
        synthetic_scores(job, only_sample=True)
    proxy.STAGE.run(jobs["clean"], show_progress=False)

    cmd = [sys.executable, "-m", "miniplm", "proxy", str(tmp_path / "killed.yaml"), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = scores_shard(RunDir(jobs["killed"].run_dir), 0)
    deadline = time.time() + 120
    while time.time() < deadline and not first.exists() and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards = len(RunDir(jobs["killed"].run_dir).doc_shards("main"))
    written = len(list(first.parent.glob("shard-*.parquet")))
    assert 1 <= written < shards, "killed after the first shard and before the last"

    subprocess.run(cmd, check=True, capture_output=True)

    def outputs(job) -> dict[str, bytes]:
        root = Path(job.run_dir) / "proxy"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert outputs(jobs["killed"]) == outputs(jobs["clean"]) != {}
    assert len([k for k in outputs(jobs["clean"]) if k.startswith("scores/")]) == shards


def test_two_processes_at_once_write_what_one_writes(tiny_models, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    jobs = {
        name: job_file(tmp_path, tiny_models, proxy_cfg={"sample_fraction": 0.3}, name=name, docs_per_shard=50)
        for name in ("one", "two")
    }
    for job in jobs.values():
        prepare.STAGE.run(job, show_progress=False)
        synthetic_scores(job, only_sample=True)
    proxy.STAGE.run(jobs["one"], show_progress=False)
    cmd = [sys.executable, "-m", "miniplm", "proxy", str(tmp_path / "two.yaml"), "-q", "--num-workers", "2"]
    procs = [subprocess.Popen([*cmd, "--worker", str(i)], stderr=subprocess.PIPE) for i in range(2)]
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read() for p in procs]

    def outputs(job) -> dict[str, bytes]:
        root = Path(job.run_dir) / "proxy"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert outputs(jobs["two"]) == outputs(jobs["one"]) != {}
    assert RunDir(jobs["two"].run_dir).stage_state("proxy")["state"] == "done"

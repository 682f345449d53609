import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from miniplm.config import ConfigError
from miniplm.corpus import prepare
from miniplm.job import load_job
from miniplm.progress import TokenRate
from miniplm.rundir import RunDir
from miniplm.scoring import score
from miniplm.scoring.logprobs import Scorer
from miniplm.scoring.score import ShardTokens
from miniplm.scoring.windows import windows_for
from miniplm.workers import Worker
from tests.conftest import write_jsonl


def reference_sum(model, bos: int, tokens: list[int], max_length: int, stride: int) -> float:
    """The plain float64 computation: each window through the model, full log-softmax, sum."""
    seq = [bos] + tokens
    total, scored_upto = 0.0, 0
    while scored_upto < len(tokens):
        start = max(scored_upto - stride, 0) if scored_upto else 0
        end = min(start + max_length, len(tokens))
        with torch.no_grad():
            logits = model(torch.tensor([seq[start:end]])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for p in range(start, end):
            if p + 1 > scored_upto:
                total += float(logp[p - start, seq[p + 1]])
        scored_upto = end
    return total


@pytest.mark.parametrize("packing", ["padded", "packed"])
@pytest.mark.parametrize("stride", [0, 5])
def test_sums_equal_a_plain_float64_computation(tiny_models, tmp_path, stride, packing):
    max_length = 16
    lengths = [1, 2, 7, 15, 16, 17, 31, 32, 33, 40, 47, 48]
    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, 300, size=n) for n in lengths]
    job = load_job(
        _job_file(tmp_path, tiny_models, "teacher"),
        [
            f"score.max_length={max_length}",
            f"score.stride={stride}",
            "score.batch_tokens=64",
            "teacher.dtype=float64",
            "reference.dtype=float64",
        ],
    )
    models = {
        name: AutoModelForCausalLM.from_pretrained(tiny_models[name], dtype=torch.float64).eval()
        for name in ("teacher", "reference")
    }
    shard = ShardTokens(0, sequences, {"id": [str(i) for i in range(len(lengths))], "source": ["s"] * len(lengths)})
    rd = RunDir(tmp_path / "run")
    bos = AutoTokenizer.from_pretrained(tiny_models["teacher"]).bos_token_id
    from tqdm import tqdm

    scorer = Scorer(models, bos, "cpu", packed=packing == "packed", batch_tokens=job.score.batch_tokens)
    assert (
        len(scorer.plan([w for d, s in enumerate(sequences) for w in windows_for(d, len(s), max_length, stride)])) > 1
    )
    table = score.score_shard(job, shard, scorer, rd, TokenRate(tqdm(disable=True)))
    assert table["n_tokens"].to_pylist() == lengths
    for name in ("teacher", "reference"):
        expected = [reference_sum(models[name], bos, s.tolist(), max_length, stride) for s in sequences]
        np.testing.assert_allclose(table[f"{name}_logprob"].to_numpy(), expected, rtol=1e-6)


def hand_count(n_tokens: list[int], max_length=32, stride=8) -> float:
    """Scoring FLOPs of one tiny model (hidden 32, FFN 64, 2 layers, 4 heads of 8, 2 key/value
    heads, vocabulary 300) over documents of these lengths, read in windows of 32 inputs that
    repeat 8 tokens of context."""
    body = 2 * 2 * (32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64)  # q, k, v, o and the MLP
    head = 2 * 32 * 300
    pair = 2 * 4 * 32  # per (query, key): scores and values, both layers
    total = 0.0
    for n in n_tokens:
        windows = [(min(n, max_length), min(n, max_length))] if n else []  # (inputs, scored)
        covered = min(n, max_length)
        while covered < n:
            length = min(n - covered + stride, max_length)
            windows.append((length, length - stride))
            covered += length - stride
        total += sum(m * body + s * head + pair * m * (m + 1) / 2 for m, s in windows)
    return total


def _job_file(tmp_path: Path, tiny_models, reference_key="reference", **corpus) -> Path:
    import yaml

    docs = tmp_path / "docs.jsonl"
    if not docs.exists():
        rng = np.random.default_rng(1)
        words = "the god created heaven earth def return print import path numbers fox dog café".split()
        write_jsonl(docs, [{"text": " ".join(rng.choice(words, size=rng.integers(1, 60)))} for _ in range(120)])
    job = {
        "run_dir": str(tmp_path / "run"),
        "corpus": {"inputs": [{"path": str(docs), "format": "jsonl"}], "docs_per_shard": 30, **corpus},
        "teacher": {"model": tiny_models["teacher"]},
        "reference": {"model": tiny_models[reference_key]},
        "score": {"max_length": 32, "stride": 8, "batch_tokens": 96, "checkpoint_every": 1},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _scores(run_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((Path(run_dir) / "scores").glob("*.parquet"))}


def test_score_stage_matches_the_models_directly(tiny_models, tmp_path):
    job = load_job(_job_file(tmp_path, tiny_models))
    prepare.STAGE.run(job, show_progress=False)
    counts = score.STAGE.run(job, show_progress=False)
    docs = pl.concat([pl.read_parquet(p) for p in RunDir(job.run_dir).doc_shards("main")])
    scores = pl.read_parquet(str(Path(job.run_dir) / "scores" / "*.parquet"))
    assert scores.columns == ["id", "source", "n_tokens", "doc_tokens", "teacher_logprob", "reference_logprob"]
    assert scores["doc_tokens"].to_list() == scores["n_tokens"].to_list()
    assert scores["id"].to_list() == docs["id"].to_list()  # shard by shard, in document order
    flops = counts.pop("flops")
    shards = len(RunDir(job.run_dir).doc_shards("main"))
    assert shards >= 3  # more than one shard, so shard order is exercised
    assert counts == {"rows": docs.height, "tokens": scores["n_tokens"].sum(), "shards": shards}
    assert flops["by"]["teacher"] == pytest.approx(hand_count(scores["n_tokens"].to_list()))
    assert flops["total"] == pytest.approx(2 * hand_count(scores["n_tokens"].to_list()))  # the same shape twice

    tok = AutoTokenizer.from_pretrained(tiny_models["teacher"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float64).eval()
    for row in scores.head(12).iter_rows(named=True):
        tokens = tok(docs.filter(pl.col("id") == row["id"])["text"][0], add_special_tokens=False)["input_ids"]
        assert row["n_tokens"] == len(tokens)
        expected = reference_sum(model, tok.bos_token_id, tokens, max_length=32, stride=8)
        assert row["teacher_logprob"] == pytest.approx(expected, rel=1e-5)


def test_max_tokens_scores_a_prefix_and_keeps_the_whole_length(tiny_models, tmp_path):
    whole = load_job(_job_file(tmp_path, tiny_models))
    cut = load_job(_job_file(tmp_path, tiny_models), [f"run_dir={tmp_path / 'cut'}", "score.max_tokens=5"])
    for job in (whole, cut):
        prepare.STAGE.run(job, show_progress=False)
        score.STAGE.run(job, show_progress=False)
    full = pl.read_parquet(str(Path(whole.run_dir) / "scores" / "*.parquet"))
    short = pl.read_parquet(str(Path(cut.run_dir) / "scores" / "*.parquet"))
    assert short["doc_tokens"].to_list() == full["doc_tokens"].to_list()
    assert short["n_tokens"].to_list() == [min(n, 5) for n in full["n_tokens"]]
    assert max(full["n_tokens"]) > 5

    tok = AutoTokenizer.from_pretrained(tiny_models["teacher"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float64).eval()
    docs = pl.concat([pl.read_parquet(p) for p in RunDir(cut.run_dir).doc_shards("main")])
    for row in short.head(6).iter_rows(named=True):
        tokens = tok(docs.filter(pl.col("id") == row["id"])["text"][0], add_special_tokens=False)["input_ids"]
        expected = reference_sum(model, tok.bos_token_id, tokens[:5], max_length=32, stride=8)
        assert row["teacher_logprob"] == pytest.approx(expected, rel=1e-5)


def test_token_logprobs_and_instances(tiny_models, tmp_path):
    job = load_job(_job_file(tmp_path, tiny_models), ["score.save_token_logprobs=true"])
    prepare.STAGE.run(job, show_progress=False)
    score.STAGE.run(job, show_progress=False)
    scores = pl.read_parquet(str(Path(job.run_dir) / "scores" / "*.parquet"))
    for row in scores.iter_rows(named=True):
        assert len(row["teacher_token_logprobs"]) == row["n_tokens"] == len(row["reference_token_logprobs"])
        assert sum(row["teacher_token_logprobs"]) == pytest.approx(row["teacher_logprob"], rel=1e-5, abs=1e-4)

    instances = load_job(_job_file(tmp_path, tiny_models), ["score.unit=instance", f"run_dir={tmp_path / 'inst'}"])
    prepare.STAGE.run(instances, show_progress=False)
    counts = score.STAGE.run(instances, show_progress=False)
    rows = pl.read_parquet(str(tmp_path / "inst" / "scores" / "*.parquet"))
    assert set(rows.columns) >= {
        "id",
        "source",
        "n_tokens",
        "teacher_logprob",
        "reference_logprob",
        "input_ids",
        "docs",
    }
    # an instance is at most max_length + 1 tokens, read with its first token as context (no BOS)
    assert (rows["input_ids"].list.len() <= 33).all()
    assert rows["n_tokens"].to_list() == [max(n - 1, 0) for n in rows["input_ids"].list.len()]
    # every document's tokens, plus its EOS, appear in exactly one place
    covered = {}
    for pieces in rows["docs"].to_list():
        for p in pieces:
            covered.setdefault(p["id"], []).append((p["start"], p["end"]))
    main_ids = pl.concat([pl.read_parquet(p) for p in RunDir(instances.run_dir).doc_shards("main")])["id"]
    assert set(covered) == set(main_ids)
    assert sum(e - s for spans in covered.values() for s, e in spans) == rows["input_ids"].list.len().sum()
    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float64).eval()
    for row in rows.filter(pl.col("n_tokens") > 0).head(8).iter_rows(named=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([row["input_ids"][:-1]])).logits[0].double(), -1)
        expected = float(logp.gather(1, torch.tensor(row["input_ids"][1:])[:, None]).sum())
        assert row["teacher_logprob"] == pytest.approx(expected, rel=1e-5)
    # FLOPs: each model reads every instance once, n_tokens inputs all projected
    flops = counts["flops"]["by"]
    from miniplm.models.flops import model_flops

    for name in ("teacher", "reference"):
        f = model_flops(tiny_models[name])
        expected = sum(n * (f.body + f.head) + f.attention * n * (n + 1) / 2 for n in rows["n_tokens"])
        assert flops[name] == pytest.approx(expected)


def test_two_workers_write_exactly_what_one_writes(tiny_models, tmp_path):
    one = load_job(_job_file(tmp_path, tiny_models), [f"run_dir={tmp_path / 'one'}"])
    two = load_job(_job_file(tmp_path, tiny_models), [f"run_dir={tmp_path / 'two'}"])
    for job in (one, two):
        prepare.STAGE.run(job, show_progress=False)
    score.STAGE.run(one, show_progress=False)
    assert score.STAGE.run(two, Worker(1, 2), show_progress=False) is None
    assert RunDir(two.run_dir).stage_state("score")["state"] == "running"
    assert score.STAGE.run(two, Worker(0, 2), show_progress=False)["rows"] > 0
    assert _scores(two.run_dir) == _scores(one.run_dir) != {}


def test_kill_9_inside_a_shard_and_resume_gives_identical_scores(tiny_models, tmp_path):
    job_path = _job_file(tmp_path, tiny_models, docs_per_shard=200)
    clean = load_job(job_path, [f"run_dir={tmp_path / 'clean'}"])
    prepare.STAGE.run(clean, show_progress=False)
    score.STAGE.run(clean, show_progress=False)

    killed = load_job(job_path)
    prepare.STAGE.run(killed, show_progress=False)
    cmd = [sys.executable, "-m", "miniplm", "score", str(job_path), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    work = Path(killed.run_dir) / "work" / "score" / "shard-00000"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.glob("batches-*.parquet"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpointed = len(list(work.glob("batches-*.parquet")))
    assert checkpointed >= 3 and not (Path(killed.run_dir) / "scores").exists(), "killed before the shard finished"

    subprocess.run(cmd, check=True, capture_output=True)
    assert _scores(killed.run_dir) == _scores(clean.run_dir) != {}


def test_tokenizer_mismatch_fails_before_any_model_loads(tiny_models, tmp_path, monkeypatch):
    job = load_job(_job_file(tmp_path, tiny_models, reference_key="other"))
    prepare.STAGE.run(job, show_progress=False)
    monkeypatch.setattr(score, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError) as err:
        score.STAGE.run(job, show_progress=False)
    assert tiny_models["teacher"] in str(err.value) and tiny_models["other"] in str(err.value)
    assert "vocabularies differ" in str(err.value)
    assert not (Path(job.run_dir) / "scores").exists()


def test_score_needs_prepared_documents_and_both_models(tiny_models, tmp_path):
    from miniplm.errors import StageError

    job = load_job(_job_file(tmp_path, tiny_models))
    with pytest.raises(StageError, match="run `miniplm prepare` first"):
        score.STAGE.run(job, show_progress=False)
    with pytest.raises(ConfigError, match="needs both"):
        score.STAGE.run(load_job(_job_file(tmp_path, tiny_models), ["reference=null"]), show_progress=False)
    with pytest.raises(ConfigError, match=r"teacher\.model: no model folder"):
        load_job(_job_file(tmp_path, tiny_models), ["teacher.model=./no/such/dir"])


def test_checkpoints_from_another_environment_or_damaged_are_not_used(tmp_path):

    from miniplm.batch_checkpoints import BatchCheckpoints as _Checkpoints

    folder = tmp_path / "shard-00000"
    cp = _Checkpoints(folder, "cpu, float32")
    cp.save(0, 1, [{"doc": 0, "start": 0, "teacher_logprob": -1.0, "reference_logprob": -2.0}])
    cp.save(2, 3, [{"doc": 1, "start": 0, "teacher_logprob": -3.0, "reference_logprob": -4.0}])
    assert _Checkpoints(folder, "cpu, float32").load() == (
        4,
        {
            (0, 0): {"teacher_logprob": -1.0, "reference_logprob": -2.0},
            (1, 0): {"teacher_logprob": -3.0, "reference_logprob": -4.0},
        },
    )
    (folder / "batches-000002-000003.parquet").write_bytes(b"")  # a crash of the machine
    assert _Checkpoints(folder, "cpu, float32").load()[0] == 2
    assert not (folder / "batches-000002-000003.parquet").exists()
    assert _Checkpoints(folder, "cuda, bfloat16").load() == (0, {})
    assert not list(folder.glob("batches-*"))


def test_counts_of_an_empty_main_split(tmp_path):
    assert score._counts(RunDir(tmp_path)) == {"rows": 0, "tokens": 0, "shards": 0}


def test_logit_scaling_of_the_architecture_is_applied(tiny_models):
    from miniplm.scoring.logprobs import target_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float64).eval()
    x = torch.tensor([[0, 5, 9, 17, 3]])
    ones = torch.ones_like(x[:, :-1])
    plain = target_logprobs(model, x[:, :-1], ones, x[:, 1:], ones.bool())
    model.config.logit_scale = 0.5
    scaled = target_logprobs(model, x[:, :-1], ones, x[:, 1:], ones.bool())
    with torch.no_grad():
        logits = model(x[:, :-1]).logits[0] * 0.5
    expected = torch.log_softmax(logits, -1).gather(1, x[0, 1:, None]).squeeze(1)
    torch.testing.assert_close(scaled, expected)
    assert not torch.allclose(plain, scaled)


def test_changed_weights_or_documents_change_the_stage_hash(tiny_models, tmp_path):
    import shutil

    from miniplm.models.loading import model_fingerprint
    from miniplm.stages import stage_config_hash

    copy = tmp_path / "teacher-copy"
    shutil.copytree(tiny_models["teacher"], copy)
    before = model_fingerprint(str(copy))
    assert model_fingerprint(str(copy)) == before
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"rms_norm_eps"', '"rms_norm_eps_"'))
    assert model_fingerprint(str(copy)) != before
    job = load_job(_job_file(tmp_path, tiny_models))
    assert stage_config_hash(job, "score", "docs-a") != stage_config_hash(job, "score", "docs-b")
    assert stage_config_hash(job, "score") == stage_config_hash(
        load_job(_job_file(tmp_path, tiny_models), ["score.checkpoint_every=7", "corpus.num_workers=2"]), "score"
    )


def test_special_token_text_in_a_document_is_read_as_text(tiny_models, tmp_path):
    """A document quoting "<eos>" or "<bos>" holds no EOS/BOS id: no forged document boundary."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from miniplm.models.loading import load_tokenizer
    from miniplm.scoring.instances import Boundaries

    tokenizer = load_tokenizer(tiny_models["teacher"])
    texts = ["a chat: <bos>user hi<eos><bos>bot hello<eos> and on.", "plain text. Then more."]
    path = tmp_path / "shard-00000.parquet"
    pq.write_table(pa.table({"id": ["d0", "d1"], "source": ["s", "s"], "text": texts}), path)
    for unit in ("document", "instance"):
        job = SimpleNamespace(score=SimpleNamespace(unit=unit, max_tokens=None, max_length=512))
        got = score.tokenize_shard(job, tokenizer, Boundaries.for_tokenizer(tokenizer), 0, path)
        tokens = [t for seq in got.sequences for t in seq.tolist()]
        n_eos = 0 if unit == "document" else 2  # the EOS packing adds after each document
        assert tokens.count(tokenizer.eos_token_id) == n_eos and tokenizer.bos_token_id not in tokens, unit


def test_an_empty_shard_is_written_with_typed_columns(tiny_models, tmp_path):
    import pyarrow as pa

    job = load_job(_job_file(tmp_path, tiny_models))
    empty = score._assemble(job, score.ShardTokens(0, [], {"id": [], "source": [], "doc_tokens": []}), [], {})
    assert empty.num_rows == 0
    assert [empty.schema.field(c).type for c in ("id", "source", "n_tokens", "doc_tokens", "teacher_logprob")] == [
        pa.string(),
        pa.string(),
        pa.int64(),
        pa.int64(),
        pa.float64(),
    ]

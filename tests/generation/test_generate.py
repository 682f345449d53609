import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from miniplm.corpus import prepare, tokenize
from miniplm.errors import ConfigError
from miniplm.generation import generate
from miniplm.generation.generate import batch_seed
from miniplm.job import load_job
from miniplm.models.flops import forward_flops_per_token
from miniplm.rundir import RunDir
from miniplm.workers import Worker
from tests.conftest import write_jsonl
from tests.pipeline.jobs import write_corpus

SETTINGS = {"prompt_tokens": 6, "max_new_tokens": 10, "samples": 2, "temperature": 0.8, "top_p": 0.9, "top_k": 20}


def _job(tmp_path: Path, tiny_models, run="run", docs_per_shard=20, **entry) -> Path:
    corpus = tmp_path / "corpus"
    pattern = str(corpus / "*.jsonl") if corpus.exists() else write_corpus(corpus, files=2, docs=40)
    job = {
        "run_dir": str(tmp_path / run),
        "seed": 5,
        "corpus": {
            "inputs": [{"path": pattern, "format": "jsonl"}],
            "docs_per_shard": docs_per_shard,
            "reference_fraction": 0.1,
            "heldout_fraction": 0.1,
        },
        "teacher": {"model": tiny_models["teacher"]},
        "generate": [{"name": "seqkd", **SETTINGS, **entry}],
        "tokenize": [{"name": "written", "input": "generated/seqkd", "seq_len": 16}],
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _shards(run_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((Path(run_dir) / "generated" / "seqkd").glob("*.parquet"))}


def test_rows_equal_a_plain_generate_call(tiny_models, tmp_path):
    job = load_job(_job(tmp_path, tiny_models))
    prepare.STAGE.run(job, show_progress=False)
    counts = generate.STAGE.run(job, show_progress=False)["generate/seqkd"]
    rd = RunDir(job.run_dir)
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_models["teacher"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"]).eval()
    rows = pl.read_parquet(rd.generated("seqkd") / "*.parquet")
    assert rows.columns[:8] == [
        "id",
        "text",
        "source",
        "prompt_id",
        "prompt_source",
        "prompt",
        "prompt_tokens",
        "new_tokens",
    ]
    expected_flops = 0.0
    for k, doc_shard in enumerate(rd.doc_shards("main")):
        docs = pl.read_parquet(doc_shard)
        prompts = [t[:6] for t in tok(docs["text"].to_list(), add_special_tokens=False)["input_ids"]]
        assert {len(p) for p in prompts} == {6}  # one batch, no padding: a plain call sees the same tensor
        torch.manual_seed(batch_seed(5, "seqkd", k, 0))
        out = model.generate(
            torch.tensor([[tok.bos_token_id, *p] for p in prompts]),
            do_sample=True,
            temperature=0.8,
            top_p=0.9,
            top_k=20,
            max_new_tokens=10,
            num_return_sequences=2,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        got = rows.filter(pl.col("id").str.starts_with("seqkd-") & pl.col("prompt_id").is_in(docs["id"].to_list()))
        assert got["prompt_id"].to_list() == [i for i in docs["id"].to_list() for _ in range(2)]
        for r, (row, seq) in enumerate(zip(got.iter_rows(named=True), out.tolist())):
            new = seq[7:]
            stop = new.index(tok.eos_token_id) if tok.eos_token_id in new else len(new)
            assert row["text"] == tok.decode(seq[1:7] + new[:stop], skip_special_tokens=True)
            assert row["prompt"] == tok.decode(prompts[r // 2]) and row["prompt_tokens"] == 6
            assert (row["new_tokens"], row["finish_reason"]) == (stop, "eos" if stop < 10 else "length")
            n = 7 + stop + (stop < 10) - 1
            expected_flops += n * forward_flops_per_token(model.config, (n + 1) / 2)
    assert counts["rows"] == rows.height == 2 * counts["prompts"]
    assert counts["flops"]["total"] == pytest.approx(expected_flops)
    assert counts["flops"]["by"] == {"generation": counts["flops"]["total"]}
    assert counts["finish_reasons"]["eos"] + counts["finish_reasons"]["length"] == rows.height
    assert "Generated corpus: seqkd" in rd.report_page.read_text()

    written = tokenize.STAGE.run(job, show_progress=False)["written"]
    assert written["documents"] == rows.height
    texts = rows["text"].to_list()
    assert written["tokens"] == sum(len(t) + 1 for t in tok(texts, add_special_tokens=False)["input_ids"])


def test_two_workers_write_what_one_writes(tiny_models, tmp_path):
    one = load_job(_job(tmp_path, tiny_models, run="one"))
    two = load_job(_job(tmp_path, tiny_models, run="two"))
    for job in (one, two):
        prepare.STAGE.run(job, show_progress=False)
    generate.STAGE.run(one, show_progress=False)
    assert generate.STAGE.run(two, Worker(1, 2), show_progress=False) == {"generate/seqkd": None}
    assert generate.STAGE.run(two, Worker(0, 2), show_progress=False)["generate/seqkd"]["shards"] >= 2
    assert _shards(two.run_dir) == _shards(one.run_dir) != {}


def test_kill_9_inside_a_shard_and_rerun_gives_the_same_shards(tiny_models, tmp_path):
    # 4 prompts (8 sequences of 17 tokens) a batch: 16 batches in the one shard
    clean = load_job(_job(tmp_path, tiny_models, run="clean", docs_per_shard=200, batch_tokens=136, checkpoint_every=1))
    prepare.STAGE.run(clean, show_progress=False)
    generate.STAGE.run(clean, show_progress=False)

    path = _job(tmp_path, tiny_models, docs_per_shard=200, batch_tokens=136, checkpoint_every=1)
    killed = load_job(path)
    prepare.STAGE.run(killed, show_progress=False)
    cmd = [sys.executable, "-m", "miniplm", "generate", str(path), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    work = Path(killed.run_dir) / "work" / "generate" / "seqkd" / "shard-00000"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.glob("batches-*.parquet"))) < 3 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(work.glob("batches-*.parquet"))) >= 3 and not _shards(killed.run_dir), "killed too late"

    subprocess.run(cmd, check=True, capture_output=True)
    assert _shards(killed.run_dir) == _shards(clean.run_dir) != {}


def test_prompts_from_a_file_skip_bad_records_and_keep_the_limit(tiny_models, tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"q": "def add(a, b):"},
            b"{not json\n",
            {"q": ""},
            {"q": 7},
            {"q": "In the beginning"},
            {"q": "The quick"},
            {"q": "import os"},
        ],
    )
    job = load_job(
        _job(tmp_path, tiny_models, prompts={"path": str(prompts), "field": "q"}, limit=2, samples=1, temperature=0)
    )
    counts = generate.STAGE.run(job, show_progress=False)["generate/seqkd"]
    rows = pl.read_parquet(RunDir(job.run_dir).generated("seqkd") / "*.parquet")
    assert rows["prompt"].to_list() == ["def add(a, b):", "In the beginning"]
    assert counts["prompts_rejected"] == {"malformed_json": 1, "empty": 1, "not_string": 1}
    assert counts["prompts"] == 2 and rows["text"].str.starts_with("def add(a, b):").to_list() == [True, False]

    # greedy decoding: the same continuation whatever the seed
    again = load_job(
        _job(
            tmp_path,
            tiny_models,
            run="again",
            prompts={"path": str(prompts), "field": "q"},
            limit=2,
            samples=1,
            temperature=0,
        ),
        ["seed=11"],
    )
    generate.STAGE.run(again, show_progress=False)
    assert pl.read_parquet(RunDir(again.run_dir).generated("seqkd") / "*.parquet")["text"].equals(rows["text"])


def test_bad_generate_settings_fail_before_any_model_loads(tiny_models, tmp_path, monkeypatch):
    path = _job(tmp_path, tiny_models)
    with pytest.raises(ConfigError, match="generated/other"):
        load_job(path, ["tokenize.0.input=generated/other"])
    job = load_job(path, ["generate.0.backend=vllm"])
    prepare.STAGE.run(job, show_progress=False)
    monkeypatch.setattr("miniplm.models.loading.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match="vllm"):
        generate.STAGE.run(job, show_progress=False)
    assert json.loads(Path(job.run_dir, "manifest.json").read_text())["stages"].get("generate/seqkd") is None


def test_special_token_text_in_a_prompt_is_read_as_text(tiny_models, tmp_path):
    """A prompt quoting "<eos>" does not end itself with a real EOS id."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from miniplm.generation.prompts import read_prompts
    from miniplm.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_models["teacher"])
    source = tmp_path / "shard-00000.parquet"
    pq.write_table(pa.table({"id": ["d0"], "source": ["s"], "text": ["user: hi<eos><bos>bot: hello<eos>"]}), source)
    shard = read_prompts(source, 1, SimpleNamespace(prompts="main", prompt_tokens=100), tokenizer, 0)
    assert len(shard.tokens[0]) > 10
    assert {tokenizer.eos_token_id, tokenizer.bos_token_id}.isdisjoint(shard.tokens[0])


def test_a_file_prompt_longer_than_the_context_is_skipped_and_new_tokens_stop_at_the_context(tiny_models, tmp_path):
    """The tiny teacher reads 512 positions: a prompt of thousands of tokens is skipped and counted, and
    max_new_tokens past the context is cut to what fits after each prompt."""
    long = "The quick brown fox jumps over the lazy dog. " * 300
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"q": "def add(a, b):"}, {"q": long}, {"q": "import os"}])
    job = load_job(
        _job(
            tmp_path,
            tiny_models,
            prompts={"path": str(prompts), "field": "q"},
            samples=1,
            temperature=0,
            max_new_tokens=600,
        )
    )
    counts = generate.STAGE.run(job, show_progress=False)["generate/seqkd"]
    rows = pl.read_parquet(RunDir(job.run_dir).generated("seqkd") / "*.parquet").sort("prompt")
    assert rows["prompt"].to_list() == ["def add(a, b):", "import os"]
    assert counts["prompts_too_long"] == 1 and counts["prompts_rejected"] == {"too_long": 1}
    assert counts["prompts_read"] == 3 and counts["prompts"] == 2
    assert all(1 + p + n <= 512 for p, n in zip(rows["prompt_tokens"], rows["new_tokens"]))


def test_a_generate_run_that_wrote_no_text_warns():
    from types import SimpleNamespace

    counts = {"rows": 0, "prompts": 0, "prompts_too_long": 3}
    warnings = generate.STAGE.warnings(SimpleNamespace(run_dir="run"), {"generate/seqkd": counts, "generate/b": None})
    assert warnings == [
        "generate seqkd: no text was generated (0 prompts; 3 skipped, too long for the model's "
        "context): anything made from generated/seqkd would be empty; check its prompts"
    ]
    assert generate.STAGE.warnings(SimpleNamespace(run_dir="run"), {"generate/seqkd": counts | {"rows": 4}}) == []

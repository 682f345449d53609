"""`generate` with `backend: server` against a real llama.cpp server on localhost (and stand-ins that
fail on purpose): the same text as the in-process backend, samples from the same distribution,
resumption after the server dies, bounded retries, and refusals before any work."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from scipy.stats import chisquare

from miniplm.errors import ConfigError
from miniplm.generation import generate
from miniplm.job import load_job
from miniplm.models.loading import SMOLLM2, load_model, load_tokenizer
from miniplm.rundir import RunDir
from miniplm.server.client import ServerError
from tests.conftest import write_jsonl
from tests.pipeline.jobs import write_corpus
from tests.server.local_server import KEY, KEY_ENV, MODEL, LlamaServer, StandIn, forward, needs_llama_server

pytestmark = needs_llama_server

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The first step in making bread is",
    "My favourite book is",
    "In 1969, astronauts",
    "The best way to learn a new language is",
    "A computer program is",
    "The ocean is",
]
# llama-cpp-python's own sampler defaults (top_k 40, min_p 0.05, repeat_penalty 1.1) switched off
NEUTRAL = {"top_k": 0, "min_p": 0, "repeat_penalty": 1.0}


def _job(tmp_path: Path, url: str | None, run: str = "run", prompts=PROMPTS, server=None, **entry) -> Path:
    corpus = write_corpus(tmp_path / "corpus", files=1, docs=4)
    prompt_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in prompts])
    settings = {"max_new_tokens": 12, "temperature": 0.0, **entry}
    if url is not None:
        settings["backend"] = "server"
        settings["server"] = {
            "url": url,
            "model": MODEL,
            "api_key_env": KEY_ENV,
            "prompt": "text",
            "extra_body": NEUTRAL,
            "max_concurrency": 4,
            "retries": 1,
            "timeout_s": 60,
            **(server or {}),
        }
    job = {
        "run_dir": str(tmp_path / run),
        "seed": 5,
        "corpus": {"inputs": [{"path": corpus, "format": "jsonl"}]},
        "teacher": {"model": SMOLLM2},
        "generate": [{"name": "seqkd", "prompts": {"path": str(prompt_file)}, **settings}],
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _rows(job) -> pl.DataFrame:
    return pl.read_parquet(RunDir(job.run_dir).generated("seqkd") / "*.parquet").sort("prompt_id")


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer(SMOLLM2), load_model(SMOLLM2, "float32", "cpu")


NEAR_TIE = 0.1  # logits this close can swap between Q4_1 x int8 (llama.cpp) and Q4_1 de-quantized x float32


def test_greedy_text_equals_the_in_process_backend(llama_server, server_key, smollm2, tmp_path):
    """Equal text, but where the model's two best tokens are within NEAR_TIE of each other at a step: the
    numeric gap between the two runtimes may swap them there (it does for one prompt of these)."""
    served = load_job(_job(tmp_path, llama_server.url))
    counts = generate.STAGE.run(served, show_progress=False)["generate/seqkd"]
    local = load_job(_job(tmp_path, None, run="local", backend="hf"))
    generate.STAGE.run(local, show_progress=False)
    a, b = _rows(served), _rows(local)
    assert len(a) == len(PROMPTS) and a["prompt_id"].to_list() == b["prompt_id"].to_list()
    assert a["finish_reason"].to_list() == b["finish_reason"].to_list() == ["length"] * len(PROMPTS)
    tok, model = smollm2
    equal = 0
    for prompt, ours, theirs in zip(a["prompt"], b["text"], a["text"]):
        ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12)
            logits = model(out).logits[0, len(ids) - 1 : -1]
        new = out[0, len(ids) :].tolist()
        assert tok.decode(ids[1:] + new) == ours  # the hf backend is plain greedy generate
        if theirs == ours:
            equal += 1
            continue
        split = next(j for j in range(len(new)) if not theirs.startswith(tok.decode(ids[1:] + new[: j + 1])))
        best = logits[split].topk(2).values
        assert best[0] - best[1] < NEAR_TIE, (prompt, split, ours, theirs)
    assert equal >= len(PROMPTS) - 2
    # the server's own token counts: 12 new tokens each (generation ran to the limit)
    assert a["new_tokens"].to_list() == [12] * len(PROMPTS)
    assert counts["new_tokens"] == 12 * len(PROMPTS) and counts["requests_failed"] == {}
    # what the server read: the prefix token and each prompt, as it counts them
    assert counts["server_prompt_tokens"] == sum(
        1 + len(tok(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS
    )
    # the key is never written: not in the run's files, not in the summary
    for f in Path(served.run_dir).rglob("*"):
        assert not f.is_file() or KEY.encode() not in f.read_bytes(), f
    assert KEY not in json.dumps(counts)


def test_samples_follow_the_teacher_distribution(llama_server, server_key, smollm2, tmp_path):
    """400 one-token samples at temperature 0.7 against the in-process model's exact probabilities."""
    n, prompt, temperature = 400, "The capital of France is", 0.7
    job = load_job(_job(tmp_path, llama_server.url, prompts=[prompt], samples=n, max_new_tokens=1, temperature=0.7))
    generate.STAGE.run(job, show_progress=False)
    tok, model = smollm2
    ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double() / temperature, -1).numpy()
    texts = _rows(job)["text"].str.strip_prefix(prompt).to_list()
    assert len(texts) == n and len(set(texts)) > 3  # seeded per request, not one draw repeated
    likely = np.argsort(-probs)[:12]
    pieces = {tok.decode([int(t)]): int(t) for t in likely}
    observed = np.array([sum(t == p for t in texts) for p in pieces] + [sum(t not in pieces for t in texts)])
    expected = np.array([probs[t] for t in pieces.values()] + [1 - probs[likely].sum()]) * n
    keep = expected >= 5  # the chi-square approximation needs 5 expected per cell; the rest pooled
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    assert chisquare(obs, exp).pvalue > 1e-3, (obs, exp.round(1))


def test_killed_server_resumes_without_duplicates(server_key, tmp_path):
    """The server dies mid-shard: the stage stops naming it; the rerun, against the server restarted,
    sends only the requests not answered and writes every row once, as an unbroken run does."""
    server = LlamaServer(tmp_path / "first.log").start()
    try:
        prompts = [f"{p} (number {i})" for i in range(3) for p in PROMPTS]  # 24 requests
        job = load_job(_job(tmp_path, server.url, prompts=prompts, server={"max_concurrency": 2}))

        def kill_after_some() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                found = list(Path(job.run_dir).glob("work/generate/seqkd/shard-*/requests/requests.jsonl"))
                if found and len(found[0].read_text().splitlines()) >= 6:
                    server.kill()
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_after_some)
        killer.start()
        with pytest.raises(ServerError, match=server.url):
            generate.STAGE.run(job, show_progress=False)
        killer.join()
        journal = next(Path(job.run_dir).glob("work/generate/seqkd/shard-*/requests/requests.jsonl"))
        # the requests in flight when it died are journaled as failed, to be sent again
        answered = sum('"failed"' not in line for line in journal.read_text().splitlines())
        assert 6 <= answered < len(prompts)
        restarted = LlamaServer(tmp_path / "second.log", port=server.port).start()
        try:
            generate.STAGE.run(job, show_progress=False)
            assert restarted.completions_served() == len(prompts) - answered  # nothing answered is sent again
            whole = load_job(_job(tmp_path, restarted.url, run="whole", prompts=prompts))
            generate.STAGE.run(whole, show_progress=False)
        finally:
            restarted.stop()
        rows = _rows(job)
        assert sorted(rows["prompt"].to_list()) == sorted(prompts)  # each once
        assert rows["text"].to_list() == _rows(whole)["text"].to_list()  # as an unbroken run writes
    finally:
        server.stop()


def _shards(job) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(RunDir(job.run_dir).generated("seqkd").glob("*.parquet"))}


def test_kill_9_of_a_worker_and_two_workers_at_once_write_what_one_writes(llama_server, server_key, tmp_path):
    """A worker killed with SIGKILL mid-shard, then rerun, and two workers started together on one run,
    write the same bytes as one unbroken run (greedy decoding: the server's answers are fixed)."""
    prompts = [f"{p} (number {i})" for i in range(3) for p in PROMPTS]
    clean = load_job(_job(tmp_path, llama_server.url, run="clean", prompts=prompts))
    generate.STAGE.run(clean, show_progress=False)

    path = _job(tmp_path, llama_server.url, run="killed", prompts=prompts, server={"max_concurrency": 1})
    cmd = [sys.executable, "-m", "miniplm", "generate", str(path), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = tmp_path / "killed" / "work" / "generate" / "seqkd" / "shard-00000" / "requests" / "requests.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_bytes().splitlines()) >= 6:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = load_job(path)
    assert 6 <= len(journal.read_bytes().splitlines()) < len(prompts) and not _shards(killed), "killed too late"
    subprocess.run(cmd, check=True, capture_output=True)
    assert _shards(killed) == _shards(clean) != {}

    both = _job(tmp_path, llama_server.url, run="both", prompts=prompts)
    pair = [subprocess.Popen([sys.executable, "-m", "miniplm", "generate", str(both), "-q"]) for _ in range(2)]
    assert [w.wait(300) for w in pair] == [0, 0]
    assert _shards(load_job(both)) == _shards(clean)


TIMED_OUT = r"no answer within timeout_s \(0.5 s\) after 1 retries"


def _fail(status: int):
    def respond(handler, body, n):
        handler.send_json(status, {"error": {"message": f"failing on purpose ({n})", "type": "server_error"}})

    return respond


def test_one_request_failing_for_good_does_not_hold_up_the_others(llama_server, server_key, tmp_path):
    """A request the server fails (500) after every retry leaves the shard unfinished, naming it; the
    others are answered meanwhile, and the next run sends only the failed one."""

    def poisoned(handler, body, n):
        if "bread" in body["prompt"]:
            handler.send_json(500, {"error": {"message": "cannot tokenize"}})
        else:
            forward(llama_server, handler, body)

    with StandIn(poisoned) as first:
        job = load_job(_job(tmp_path, first.url, server={"retries": 1, "max_concurrency": 2}))
        with pytest.raises(ServerError, match=r"1 requests failed after their retries \(prompt .* sample 0\)"):
            generate.STAGE.run(job, show_progress=False)
        assert first.count == len(PROMPTS) + 1  # every prompt once, the bad one retried once
    with StandIn(lambda handler, body, n: forward(llama_server, handler, body)) as second:
        healed = load_job(_job(tmp_path, second.url, server={"retries": 1, "max_concurrency": 2}))
        counts = generate.STAGE.run(healed, show_progress=False)["generate/seqkd"]
        assert second.count == 1 and counts["rows"] == len(PROMPTS) and counts["requests_failed"] == {}


@pytest.mark.parametrize(
    "respond, settings, said, tries",
    [
        (_fail(500), {"retries": 2}, r"last status 500 after 2 retries", 3),  # the first try and two retries
        (lambda handler, body, n: time.sleep(5), {"retries": 1, "timeout_s": 0.5}, TIMED_OUT, 2),
    ],
    ids=["500", "hang"],
)
def test_a_failing_server_stops_after_the_retries(server_key, tmp_path, respond, settings, said, tries):
    with StandIn(respond) as stand_in:
        job = load_job(_job(tmp_path, stand_in.url, prompts=PROMPTS[:1], server={"max_concurrency": 1, **settings}))
        started = time.monotonic()
        with pytest.raises(ServerError, match=rf"{stand_in.url}: {said}"):
            generate.STAGE.run(job, show_progress=False)
        assert time.monotonic() - started < 10 and stand_in.count == tries


def test_overload_is_retried_and_refusals_are_counted(llama_server, server_key, tmp_path):
    """429 and 503 on the first tries are retried to the same rows; a request refused with 400 is
    counted by reason and warned about, never a silent gap."""

    def respond(handler, body, n):
        if n <= 2:
            handler.send_json(429 if n == 1 else 503, {"error": {"message": "busy"}})
        elif "bread" in body["prompt"]:
            handler.send_json(400, {"error": {"message": "this prompt is refused"}})
        else:
            forward(llama_server, handler, body)

    with StandIn(respond) as stand_in:
        job = load_job(_job(tmp_path, stand_in.url, server={"retries": 3, "max_concurrency": 1}))
        counts = generate.STAGE.run(job, show_progress=False)["generate/seqkd"]
        rows = _rows(job)
        assert len(rows) == len(PROMPTS) - 1 and not any("bread" in p for p in rows["prompt"].to_list())
        assert counts["requests_failed"] == {"status 400: this prompt is refused": 1}
        assert any("refused" in w for w in generate.STAGE.warnings(job, {"generate/seqkd": counts}))
        direct = load_job(_job(tmp_path, llama_server.url, run="direct"))
        generate.STAGE.run(direct, show_progress=False)
        assert rows["text"].to_list() == _rows(direct).filter(~pl.col("prompt").str.contains("bread"))["text"].to_list()


def test_wrong_model_or_key_stops_before_any_shard(llama_server, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    job = load_job(_job(tmp_path, llama_server.url))
    with pytest.raises(
        ServerError, match=rf"{llama_server.url}: the server refused the key in \${KEY_ENV} \(status 401\)"
    ):
        generate.STAGE.run(job, show_progress=False)
    monkeypatch.setenv(KEY_ENV, KEY)
    job = load_job(_job(tmp_path, llama_server.url, server={"model": "llama-70b"}))
    with pytest.raises(ServerError, match=r"serves 'smollm2', not 'llama-70b'"):
        generate.STAGE.run(job, show_progress=False)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=f"{KEY_ENV} is not set"):
        generate.STAGE.run(load_job(_job(tmp_path, llama_server.url)), show_progress=False)
    assert not RunDir(job.run_dir).generated("seqkd").exists()

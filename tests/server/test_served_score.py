"""`score` with the teacher behind a server (prompt log-probs from completions with echo and logprobs):
llama.cpp's runtime serving the bundled GGUF in the OpenAI layout, against in-process scoring of the
same model; and llama-cpp-python's own server, refused before any shard."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from miniplm.corpus import prepare
from miniplm.errors import ConfigError
from miniplm.job import load_job
from miniplm.models.loading import SMOLLM2
from miniplm.rundir import RunDir
from miniplm.scoring import score
from miniplm.server.client import ServerError
from tests.conftest import write_jsonl
from tests.server.local_server import KEY_ENV, MODEL, EchoLogprobs, StandIn, needs_llama_server

pytestmark = needs_llama_server

DOCS = [
    "The river runs through the old town, past the market and the church, and on to the sea.",
    "To make a cup of tea, boil fresh water, warm the pot, add the leaves and wait four minutes.",
    "def mean(values):\n    return sum(values) / len(values)\n\nprint(mean([1, 2, 3]))",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in the leaves of plants.",
    "The meeting is moved to Thursday at ten; please bring the budget figures for the third quarter.",
    "Mountains cover a quarter of the land on Earth, and many rivers begin as snow on their peaks.",
]
# Q4_1 weights: llama.cpp multiplies them with 8-bit activations, the in-process model (de-quantized to
# float32) with float32 ones. On these documents (98 tokens) per-token log-probs differ by 0.05 nats in
# the median, 0.08 on average, 0.65 at most (the larger gaps on unlikely tokens)
TOKEN_TOLERANCE = 1.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One file for every run, its ids its own: the same documents in the main split every time."""
    folder = tmp_path_factory.mktemp("docs")
    return write_jsonl(folder / "docs.jsonl", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(DOCS)])


def _job(tmp_path: Path, corpus: Path, run: str, url: str | None = None, **server) -> Path:
    settings = {"max_length": 24, "stride": 4, "batch_tokens": 96, "save_token_logprobs": True}
    if url is not None:
        settings["teacher_server"] = {
            "url": url,
            "model": MODEL,
            "api_key_env": KEY_ENV,
            "max_concurrency": 4,
            "retries": 1,
            **server,
        }
    job = {
        "run_dir": str(tmp_path / run),
        "seed": 5,
        "corpus": {
            "inputs": [{"path": str(corpus), "format": "jsonl", "id_field": "id"}],
            "heldout_fraction": 0.0,
            "reference_fraction": 0.2,
        },
        "teacher": {"model": SMOLLM2},
        "reference": {"model": SMOLLM2},
        "score": settings,
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _scores(job) -> pl.DataFrame:
    return pl.read_parquet(RunDir(job.run_dir).scores / "*.parquet").sort("id")


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("in-process")
    job = load_job(_job(tmp, corpus, "local"))
    prepare.STAGE.run(job, show_progress=False)
    score.STAGE.run(job, show_progress=False)
    return _scores(job)


def test_server_log_probs_equal_in_process_scoring(server_key, corpus, in_process, tmp_path):
    with StandIn(EchoLogprobs()) as stand_in:
        job = load_job(_job(tmp_path, corpus, "served", stand_in.url))
        prepare.STAGE.run(job, show_progress=False)
        score.STAGE.run(job, show_progress=False)
    served = _scores(job)
    assert served["id"].to_list() == in_process["id"].to_list()
    assert served["n_tokens"].to_list() == in_process["n_tokens"].to_list()
    assert served["reference_logprob"].to_list() == in_process["reference_logprob"].to_list()  # in-process both
    ours = np.concatenate(in_process["teacher_token_logprobs"].to_list())
    theirs = np.concatenate(served["teacher_token_logprobs"].to_list())
    assert len(ours) == len(theirs) == served["n_tokens"].sum() > 80
    assert served["n_tokens"].max() > 24  # a document in windows of 24, the later ones after 4 tokens of context
    gap = np.abs(ours - theirs)
    # the same tokens: placed one position off, the gap would be tens of times larger
    assert gap.mean() < np.abs(ours[1:] - theirs[:-1]).mean() / 10
    assert np.median(gap) < 0.1 and gap.max() < TOKEN_TOLERANCE, (np.median(gap), gap.max())
    assert np.corrcoef(ours, theirs)[0, 1] > 0.99
    per_token = (served["teacher_logprob"] - in_process["teacher_logprob"]).abs() / served["n_tokens"]
    assert per_token.max() < 0.15


def test_servers_that_cannot_score_are_refused_before_any_shard(llama_server, server_key, corpus, tmp_path):
    job = load_job(_job(tmp_path, corpus, "text-only", llama_server.url))
    prepare.STAGE.run(job, show_progress=False)
    probe = f"{llama_server.url} failed a three-token probe: scoring sends prompts of token ids"
    with pytest.raises(ServerError, match=probe):
        score.STAGE.run(job, show_progress=False)
    with StandIn(EchoLogprobs(drop_first=True)) as stand_in:  # answers in llama-cpp-python's layout
        job = load_job(_job(tmp_path, corpus, "shifted", stand_in.url))
        prepare.STAGE.run(job, show_progress=False)
        with pytest.raises(ServerError, match="not one per prompt token"):
            score.STAGE.run(job, show_progress=False)
    assert not RunDir(job.run_dir).scores.exists() or not list(RunDir(job.run_dir).scores.glob("*.parquet"))
    with pytest.raises(ConfigError, match="scoring sends token ids"):
        load_job(_job(tmp_path, corpus, "text", llama_server.url, prompt="text"))


def test_a_server_lost_mid_shard_costs_only_the_unanswered_windows(server_key, corpus, tmp_path):
    """The server answers 6 windows, then 503 for good: the stage stops naming it; against a server
    back up, the rerun sends only the windows not answered and writes what an unbroken run writes."""
    echo = EchoLogprobs()

    def dying(handler, body, n):
        if n <= 7:  # the probe and six windows
            echo(handler, body, n)
        else:
            handler.send_json(503, {"error": {"message": "gone"}})

    with StandIn(dying) as first:
        job = load_job(_job(tmp_path, corpus, "broken", first.url, max_concurrency=1))
        prepare.STAGE.run(job, show_progress=False)
        with pytest.raises(ServerError, match=rf"{first.url}: last status 503 after 1 retries: gone"):
            score.STAGE.run(job, show_progress=False)
    journal = next(Path(job.run_dir).glob("work/score/shard-*/teacher-requests/requests.jsonl"))
    lines = journal.read_text().splitlines()
    # six answered; the failures journaled until a batch waited on one, or three in a row
    assert sum('"failed"' not in line for line in lines) == 6 and 7 <= len(lines) <= 9
    with StandIn(echo) as second:
        resumed = load_job(_job(tmp_path, corpus, "broken", second.url, max_concurrency=1))
        score.STAGE.run(resumed, show_progress=False)
        sent = second.count
        whole = load_job(_job(tmp_path, corpus, "whole", second.url))
        prepare.STAGE.run(whole, show_progress=False)
        score.STAGE.run(whole, show_progress=False)
        windows = second.count - sent - 1  # all of them, less the probe
    assert sent == 1 + windows - 6  # the probe, then only what was not answered
    assert _scores(resumed).equals(_scores(whole))

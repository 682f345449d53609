from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from miniplm.config import ConfigError
from miniplm.corpus import prepare, tokenize
from miniplm.corpus.tokens import TokenRows
from miniplm.errors import StageError
from miniplm.job import load_job
from miniplm.rundir import RunDir
from miniplm.workers import Worker
from tests.conftest import write_jsonl


def test_pack_cuts_the_eos_joined_stream_into_shuffled_rows():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    rows, tail = tokenize.pack(docs, eos=0, seq_len=3, rng=np.random.default_rng(0))
    stream = [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 0]
    assert rows.shape == (3, 4) and tail == 0
    assert sorted(map(tuple, rows.tolist())) == sorted(tuple(stream[i : i + 4]) for i in range(0, 12, 4))
    again, _ = tokenize.pack(docs, eos=0, seq_len=3, rng=np.random.default_rng(0))
    assert (again == rows).all()
    rows, tail = tokenize.pack(docs, eos=0, seq_len=4, rng=np.random.default_rng(0))
    assert rows.shape == (2, 5) and tail == 2
    assert tokenize.pack([], eos=0, seq_len=4, rng=np.random.default_rng(0))[0].shape == (0, 5)


def _job(tmp_path, tiny_models, name="run", **token_set):
    docs = tmp_path / "docs.jsonl"
    if not docs.exists():
        rng = np.random.default_rng(2)
        words = "the god created heaven earth def return print import path numbers fox dog".split()
        write_jsonl(docs, [{"text": " ".join(rng.choice(words, size=rng.integers(1, 40)))} for _ in range(90)])
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp_path / name),
                "seed": 5,
                "corpus": {
                    "inputs": [{"path": str(docs), "format": "jsonl"}],
                    "docs_per_shard": 20,
                    "reference_fraction": 0.2,
                    "heldout_fraction": 0.0,
                },
                "teacher": {"model": tiny_models["teacher"]},
                "tokenize": [
                    {"name": "ref", "input": "reference", "seq_len": 16, **token_set},
                    {"name": "main", "input": "main", "seq_len": 8},
                ],
            }
        )
    )
    job = load_job(path)
    prepare.STAGE.run(job, show_progress=False)
    return job


def test_token_shards_hold_every_document_token_and_read_memory_mapped(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    job = _job(tmp_path, tiny_models)
    counts = tokenize.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    tok = AutoTokenizer.from_pretrained(tiny_models["teacher"])
    for name, split, seq_len in (("ref", "reference", 16), ("main", "main", 8)):
        import polars as pl

        texts = [t for s in rd.doc_shards(split) for t in pl.read_parquet(s)["text"]]
        c = counts[name]
        assert c["documents"] == len(texts) and c["seq_len"] == seq_len
        assert c["tokens"] == sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
        assert c["rows"] * (seq_len + 1) + c["tail_tokens_dropped"] == c["tokens"]
        before = pa.total_allocated_bytes()
        rows = TokenRows(rd.root / "tokens" / name)
        assert len(rows) == c["rows"] and rows.width == seq_len + 1
        assert sum(int((rows[i] == tok.eos_token_id).sum()) for i in range(len(rows))) <= len(texts)
        assert pa.total_allocated_bytes() == before  # the rows are views of the mapped files
        assert rd.stage_state(f"tokenize/{name}")["counts"] == c

    # The first shard's rows, unshuffled, are the start of its EOS-joined stream.
    import polars as pl

    first = pl.read_parquet(rd.doc_shards("main")[0])["text"].to_list()
    stream = [t for text in first for t in tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    shard0 = TokenRows(rd.root / "tokens" / "main")._blocks[0]
    expected = sorted(tuple(stream[i : i + 9]) for i in range(0, len(stream) - 8, 9))
    assert sorted(map(tuple, shard0.tolist())) == expected


def test_another_tokenizer_and_two_workers(tiny_models, tmp_path):
    one = _job(tmp_path, tiny_models, name="one", input="main", tokenizer=tiny_models["other"])
    two = _job(tmp_path, tiny_models, name="two", input="main", tokenizer=tiny_models["other"])
    tokenize.STAGE.run(one, only="ref", show_progress=False)
    assert tokenize.STAGE.run(two, Worker(0, 2), only="ref", show_progress=False) == {"ref": None}
    assert tokenize.STAGE.run(two, Worker(1, 2), only="ref", show_progress=False)["ref"]["rows"] > 0
    files = lambda job: {p.name: p.read_bytes() for p in (Path(job.run_dir) / "tokens" / "ref").glob("*")}  # noqa: E731
    assert files(one) == files(two) != {}
    assert max(int(TokenRows(Path(one.run_dir) / "tokens" / "ref")[i].max()) for i in range(3)) < 280  # other vocab


def test_tokenize_errors(tiny_models, tmp_path):
    job = _job(tmp_path, tiny_models, input="selected")
    with pytest.raises(StageError, match="run `miniplm select` first"):
        tokenize.STAGE.run(job, only="ref", show_progress=False)
    with pytest.raises(ConfigError, match="no token set 'nope'"):
        tokenize.STAGE.run(job, only="nope", show_progress=False)
    path = tmp_path / "dup.yaml"
    data = yaml.safe_load((tmp_path / "run.yaml").read_text())
    data["tokenize"][1]["name"] = "ref"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="names must differ"):
        load_job(path)


def test_each_random_control_is_a_tokenize_input(tiny_models, tmp_path):
    """A job asking for both controls: select writes both folders, and a token set reads each by name."""
    import polars as pl
    from transformers import AutoTokenizer

    from tests.selection.test_select import make_scored_run, run_select

    sets = [
        {"name": name, "input": folder, "seq_len": 8, "tokenizer": tiny_models["teacher"]}
        for name, folder in (("random", "selected-random"), ("random-filtered", "selected-random-filtered"))
    ]
    noisy = [f"doc-{i:03d}" for i in range(0, 200, 10)]
    job = make_scored_run(
        tmp_path,
        noisy=noisy,
        extra={"tokenize": sets},
        keep_fraction=None,
        keep_token_fraction=0.5,
        min_teacher_logprob=-2.0,
        random_baseline="both",
    )
    chosen = run_select(job, show_progress=False)
    counts = tokenize.STAGE.run(job, show_progress=False)
    tok = AutoTokenizer.from_pretrained(tiny_models["teacher"])
    rd = RunDir(job.run_dir)
    for name, entry, folder in (
        ("random", "random_baseline", "selected-random"),
        ("random-filtered", "random_baseline_filtered", "selected-random-filtered"),
    ):
        docs = pl.concat([pl.read_parquet(p) for p in rd.selected(folder).glob("shard-*.parquet")])
        assert counts[name]["documents"] == docs.height == chosen[entry]["kept"] > 0
        assert counts[name]["tokens"] == sum(
            len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in docs["text"]
        )
        assert len(TokenRows(rd.tokens(name))) == counts[name]["rows"] > 0
    filtered = pl.concat([pl.read_parquet(p) for p in rd.selected("selected-random-filtered").glob("*.parquet")])
    assert set(filtered["id"]).isdisjoint(noisy)

    # a selection made without the filtered control cannot feed a token set that names it
    state = rd.stage_state("select")
    rd.update_stage("select", counts={k: v for k, v in state["counts"].items() if k != "random_baseline_filtered"})
    with pytest.raises(
        ConfigError,
        match="input selected-random-filtered needs select.random_baseline: filtered "
        r"\(or both\), and the selection there was made without it",
    ):
        tokenize.input_shards(rd, job.tokenize[1])


def test_special_token_text_in_documents_and_instance_pieces_is_read_as_text(tiny_models, tmp_path):
    """ "<eos>" written in a document is text: the only EOS ids in a token set are the ones after documents."""
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from miniplm.corpus.instance_rows import piece_token_lists
    from miniplm.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_models["teacher"])
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    text = "user: hi<eos><bos>bot: hello<eos> " * 8
    source = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["d0"], "text": [text]}), source)
    out = tmp_path / "out"
    out.mkdir()
    job, token_set = SimpleNamespace(seed=0), SimpleNamespace(seq_len=7)
    tokenize.tokenize_shard(job, token_set, tokenizer, eos, 0, source, out)
    rows = TokenRows(out)
    tokens = [t for i in range(len(rows)) for t in np.asarray(rows[i]).tolist()]
    assert len(tokens) > 40 and tokens.count(eos) <= 1 and bos not in tokens
    pieces = piece_token_lists([text], [[{"char_start": 0, "char_end": len(text), "ends_doc": True}]], tokenizer, eos)
    assert pieces[0].count(eos) == 1 and pieces[0][-1] == eos and bos not in pieces[0]

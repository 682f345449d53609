import json
import os
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from miniplm.config import ConfigError
from miniplm.corpus import prepare, tokenize
from miniplm.corpus.tokens import TokenRows
from miniplm.errors import StageError
from miniplm.export import export, provenance
from miniplm.job import load_job
from miniplm.models.loading import load_tokenizer
from miniplm.rundir import RunDir
from tests.conftest import write_jsonl
from tests.export import readers

FORMATS = ("megatron", "olmo-npy", "litdata", "mds")


def write_job(tmp_path, tiny_models, exports, name="run", **extra):
    docs = tmp_path / "docs.jsonl"
    if not docs.exists():
        rng = np.random.default_rng(4)
        words = "the god created heaven earth def return print import path numbers fox dog".split()
        write_jsonl(docs, [{"text": " ".join(rng.choice(words, size=rng.integers(1, 60)))} for _ in range(80)])
    job = {
        "run_dir": str(tmp_path / name),
        "seed": 3,
        "corpus": {
            "inputs": [{"path": str(docs), "format": "jsonl"}],
            "docs_per_shard": 20,
            "reference_fraction": 0.2,
            "heldout_fraction": 0.0,
        },
        "teacher": {"model": tiny_models["teacher"]},
        "tokenize": [{"name": "rows", "input": "main", "seq_len": 16}],
        "export": exports,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def job_for(tmp_path, tiny_models, exports, name="run", **extra):
    return load_job(write_job(tmp_path, tiny_models, exports, name, **extra))


def read_back(fmt: str, out: Path, rows, eos: int, dtype: str) -> list[np.ndarray]:
    if fmt == "olmo-npy":
        found, documents = readers.olmo_npy(out, rows, eos, dtype)
        return found
    return {"megatron": readers.megatron, "litdata": readers.litdata, "mds": readers.mds}[fmt](out, rows)


def cited(rows, texts: dict[str, str], tokenizer, eos: int) -> list[list[int]]:
    """Each provenance row's sources, tokenized again from their documents' text and cut to the
    cited ranges (a document's EOS is its token len(doc))."""
    found = []
    for row in rows.to_pylist():
        tokens = []
        for doc, start, end in zip(row["source_ids"], row["token_starts"], row["token_ends"]):
            ids = tokenizer(texts[doc], add_special_tokens=False, split_special_tokens=True)["input_ids"] + [eos]
            tokens += ids[start:end]
        found.append(tokens)
    return found


def main_texts(rd: RunDir) -> dict[str, str]:
    frame = pl.concat([pl.read_parquet(s) for s in rd.doc_shards("main")])
    return dict(zip(frame["id"], frame["text"]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_documents_and_a_token_set_read_back_by_the_formats_own_reader(tiny_models, tmp_path, fmt):
    """Every sequence the format's reader gives back is what miniplm trains on (a document's tokens
    and EOS; a token set's rows as they are), and its provenance cites exactly those tokens."""
    job = job_for(
        tmp_path,
        tiny_models,
        [{"name": "docs", "from": "main", "format": fmt}, {"name": "rows", "from": "tokens/rows", "format": fmt}],
    )
    prepare.STAGE.run(job, show_progress=False)
    tokenize.STAGE.run(job, show_progress=False)
    counts = export.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    tok = load_tokenizer(tiny_models["teacher"])
    eos = tok.eos_token_id
    texts = main_texts(rd)

    out = rd.export("docs")
    rows = provenance.read(out)
    description = json.loads((out / "export.json").read_text())
    assert description["dtype"] == {"megatron": "uint16", "olmo-npy": "uint16"}.get(fmt, "int32")
    expected = [tok(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts.values()]
    found = read_back(fmt, out, rows, eos, description["dtype"])
    assert [s.tolist() for s in found] == expected  # documents in shard order, each with its EOS
    assert rows["source_ids"].to_pylist() == [[d] for d in texts]
    assert cited(rows, texts, tok, eos) == expected
    assert counts["export/docs"]["sequences"] == len(texts) == rows.num_rows
    assert counts["export/docs"]["tokens"] == sum(map(len, expected))
    if fmt == "olmo-npy":  # OLMo-core finds the same documents by their EOS, and trains on their stream
        _, documents = readers.olmo_npy(out, rows, eos, description["dtype"])
        assert [d for f in sorted(documents) for d in documents[f]] == [
            (r["offset"], r["offset"] + r["length"]) for r in rows.to_pylist()
        ]
        files = sorted(description["files"])
        instances = readers.olmo_fsl(out, files, 8, eos, len(tok), description["dtype"], tmp_path / "olmo-work")
        streams = {f: [] for f in files}
        for row, tokens in zip(rows.to_pylist(), expected):
            streams[row["file"]] += tokens
        cut = [s[i : i + 8] for f in files for s in [streams[f]] for i in range(0, len(s) - 7, 8)]
        assert [i.tolist() for i in instances] == cut and len(cut) > 20

    out = rd.export("rows")
    rows = provenance.read(out)
    token_rows = TokenRows(rd.tokens("rows"))
    expected = [np.asarray(token_rows[i]).tolist() for i in range(len(token_rows))]
    found = read_back(fmt, out, rows, eos, json.loads((out / "export.json").read_text())["dtype"])
    assert [s.tolist() for s in found] == expected and len(expected) > 10
    assert cited(rows, texts, tok, eos) == expected  # each row traced to the documents it packs
    assert max(len(r) for r in rows["source_ids"].to_pylist()) > 1  # rows that span documents
    assert counts["export/rows"]["without_sources"] == 0


def test_bad_input_is_refused_before_any_shard_is_written(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="format"):
        job_for(tmp_path, tiny_models, [{"name": "a", "from": "main", "format": "parquet"}])
    with pytest.raises(ConfigError, match="export.a: from 'tokens/nope' names no token set"):
        job_for(tmp_path, tiny_models, [{"name": "a", "from": "tokens/nope", "format": "mds"}])
    with pytest.raises(ConfigError, match="from must be one of"):
        job_for(tmp_path, tiny_models, [{"name": "a", "from": "elsewhere", "format": "mds"}])
    with pytest.raises(ConfigError, match="generated/poems. names no corpus"):
        job_for(tmp_path, tiny_models, [{"name": "a", "from": "generated/poems", "format": "mds"}])
    with pytest.raises(ConfigError, match="is a token set, written as it was tokenized: give no tokenizer"):
        job_for(tmp_path, tiny_models, [{"name": "a", "from": "tokens/rows", "format": "mds", "tokenizer": "x"}])
    with pytest.raises(ConfigError, match="needs select.random_baseline"):
        job_for(tmp_path, tiny_models, [{"name": "a", "from": "selected-random", "format": "mds"}])

    job = job_for(tmp_path, tiny_models, [{"name": "a", "from": "selected", "format": "megatron"}])
    with pytest.raises(StageError, match="run `miniplm select` first"):
        export.STAGE.run(job, show_progress=False)
    prepare.STAGE.run(job, show_progress=False)
    job = job_for(tmp_path, tiny_models, [{"name": "a", "from": "tokens/rows", "format": "megatron"}])
    with pytest.raises(StageError, match=r"run `miniplm tokenize --only rows` first"):
        export.STAGE.run(job, show_progress=False)

    with pytest.raises(ConfigError, match=r"export.a.dtype: megatron takes uint16 or int32 \(got uint32\)"):
        job_for(tmp_path, tiny_models, [{"name": "a", "from": "main", "format": "megatron", "dtype": "uint32"}])

    # a vocabulary past 65,536 ids does not fit uint16
    big = load_tokenizer(tiny_models["teacher"])
    big.add_tokens([f"<extra{i}>" for i in range(70_000 - len(big))])
    big.save_pretrained(tmp_path / "big")
    job = job_for(
        tmp_path,
        tiny_models,
        [{"name": "a", "from": "main", "format": "olmo-npy", "dtype": "uint16", "tokenizer": str(tmp_path / "big")}],
    )
    with pytest.raises(ConfigError, match=r"export.a.dtype: tokenizer '.*big' has 70,000 ids, more than uint16 holds"):
        export.STAGE.run(job, show_progress=False)
    assert not RunDir(job.run_dir).export("a").exists()  # refused before a shard was written
    job = job_for(
        tmp_path, tiny_models, [{"name": "a", "from": "main", "format": "olmo-npy", "tokenizer": str(tmp_path / "big")}]
    )
    assert export.STAGE.run(job, show_progress=False)["export/a"]["dtype"] == "uint32"  # auto picks what fits


def test_a_missing_library_says_which_package_to_install(monkeypatch):
    import sys

    for fmt in [f for f in export.FORMATS.values() if f.module]:  # olmo-npy is written with numpy alone
        monkeypatch.setitem(sys.modules, fmt.module, None)  # what an import of a missing package meets
        with pytest.raises(ConfigError, match=f"export format {fmt.name} is written with {fmt.package}: pip install"):
            fmt.library()


def test_a_mix_carries_the_sources_of_the_rows_it_draws(tiny_models, tmp_path):
    job = job_for(
        tmp_path,
        tiny_models,
        [{"name": "mixed", "from": "tokens/mixed", "format": "olmo-npy"}],
        tokenize=[
            {"name": "rows", "input": "main", "seq_len": 16},
            {"name": "ref", "input": "reference", "seq_len": 16},
            {"name": "mixed", "mix": {"rows": 1.0, "ref": 1.0}, "seq_len": 16},
        ],
    )
    prepare.STAGE.run(job, show_progress=False)
    tokenize.STAGE.run(job, show_progress=False)
    export.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    tok = load_tokenizer(tiny_models["teacher"])
    texts = main_texts(rd) | dict(
        pl.concat([pl.read_parquet(s) for s in rd.doc_shards("reference")]).select("id", "text").iter_rows()
    )
    rows = provenance.read(rd.export("mixed"))
    mixed = TokenRows(rd.tokens("mixed"))
    expected = [np.asarray(mixed[i]).tolist() for i in range(len(mixed))]
    found, _ = readers.olmo_npy(rd.export("mixed"), rows, tok.eos_token_id, "uint16")
    assert [s.tolist() for s in found] == expected and len(expected) > 4
    assert cited(rows, texts, tok, tok.eos_token_id) == expected
    ids = {d for r in rows["source_ids"].to_pylist() for d in r}
    assert ids & set(main_texts(rd)) and ids - set(main_texts(rd))  # drawn from both sets


def test_a_worker_killed_inside_a_shard_resumes_at_the_first_batch_not_saved(tiny_models, tmp_path, monkeypatch):
    """Tokenized batches are saved as they are made: the rerun tokenizes only the rest of the shard,
    and writes what an uninterrupted run writes."""
    from miniplm.export import sequences

    monkeypatch.setattr(sequences, "BATCH", 4)
    exports = [{"name": "a", "from": "main", "format": "megatron"}]
    clean, cut = job_for(tmp_path, tiny_models, exports, "clean"), job_for(tmp_path, tiny_models, exports, "cut")
    for job in (clean, cut):
        prepare.STAGE.run(job, show_progress=False)
    export.STAGE.run(clean, show_progress=False)

    tokenized = []
    real = sequences.token_ids

    def dies_after_two_batches(tokenizer, texts):
        if len(tokenized) == 2:
            raise KeyboardInterrupt  # a worker stopped mid-shard
        tokenized.append(len(texts))
        return real(tokenizer, texts)

    monkeypatch.setattr(sequences, "token_ids", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        export.STAGE.run(cut, show_progress=False)
    monkeypatch.setattr(
        sequences, "token_ids", lambda tokenizer, texts: tokenized.append(len(texts)) or real(tokenizer, texts)
    )
    export.STAGE.run(cut, show_progress=False)
    first_shard = len(pl.read_parquet(RunDir(cut.run_dir).doc_shards("main")[0]))
    assert sum(tokenized) == len(main_texts(RunDir(cut.run_dir)))  # each document tokenized once
    assert tokenized[2] == min(4, first_shard - 8)  # the rerun began at the shard's third batch

    def files(job):
        root = RunDir(job.run_dir).export("a")
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(cut) == files(clean) != {}


def _export_files(job) -> dict[str, bytes]:
    root = Path(job.run_dir) / "exports"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


ALL = [{"name": f, "from": "main", "format": f} for f in FORMATS]


def test_kill_9_mid_export_and_rerun_writes_the_same_bytes(tiny_models, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    jobs = {name: job_for(tmp_path, tiny_models, ALL, name) for name in ("clean", "killed")}
    for job in jobs.values():
        prepare.STAGE.run(job, show_progress=False)
    export.STAGE.run(jobs["clean"], show_progress=False)

    cmd = [sys.executable, "-m", "miniplm", "export", str(tmp_path / "killed.yaml"), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = RunDir(jobs["killed"].run_dir).export("litdata") / provenance.FOLDER / "shard-00000.parquet"
    deadline = time.time() + 300
    while time.time() < deadline and not first.exists() and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(first.parent.glob("shard-*.parquet")))
    assert 1 <= written < len(RunDir(jobs["killed"].run_dir).doc_shards("main")), "killed inside the litdata export"

    subprocess.run(cmd, check=True, capture_output=True)
    assert _export_files(jobs["killed"]) == _export_files(jobs["clean"]) != {}


def test_two_workers_write_what_one_writes(tiny_models, tmp_path):
    import subprocess
    import sys

    jobs = {name: job_for(tmp_path, tiny_models, ALL, name) for name in ("one", "two")}
    for job in jobs.values():
        prepare.STAGE.run(job, show_progress=False)
    export.STAGE.run(jobs["one"], show_progress=False)
    cmd = [sys.executable, "-m", "miniplm", "export", str(tmp_path / "two.yaml"), "-q", "--num-workers", "2"]
    procs = [subprocess.Popen([*cmd, "--worker", str(i)], stderr=subprocess.PIPE) for i in range(2)]
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    assert _export_files(jobs["two"]) == _export_files(jobs["one"]) != {}
    assert all(RunDir(jobs["two"].run_dir).stage_state(f"export/{f}")["state"] == "done" for f in FORMATS)


def test_a_changed_selection_makes_the_export_out_of_date_and_force_deletes_only_its_own(tiny_models, tmp_path):
    job = job_for(tmp_path, tiny_models, [{"name": "a", "from": "tokens/rows", "format": "megatron"}])
    prepare.STAGE.run(job, show_progress=False)
    tokenize.STAGE.run(job, show_progress=False)
    export.STAGE.run(job, show_progress=False)
    changed = job_for(
        tmp_path,
        tiny_models,
        [{"name": "a", "from": "tokens/rows", "format": "megatron"}],
        tokenize=[{"name": "rows", "input": "main", "seq_len": 12}],
    )
    tokenize.STAGE.run(changed, force=True, show_progress=False)
    with pytest.raises(ConfigError, match=r"changed: the output of tokenize/rows in tokens/rows \(redone since\)"):
        export.STAGE.run(changed, show_progress=False)
    out = RunDir(job.run_dir).export("a")
    (out / "notes.txt").write_text("mine")
    counts = export.STAGE.run(changed, force=True, show_progress=False)["export/a"]
    assert counts["tokens"] == len(TokenRows(RunDir(job.run_dir).tokens("rows"))) * 13
    assert (out / "notes.txt").read_text() == "mine"


def test_status_and_the_report_show_the_exports(tiny_models, tmp_path):
    import subprocess
    import sys

    path = write_job(tmp_path, tiny_models, [{"name": "meg", "from": "main", "format": "megatron"}])
    cli = [sys.executable, "-m", "miniplm"]
    subprocess.run([*cli, "prepare", str(path), "-q"], check=True, capture_output=True)
    before = subprocess.run([*cli, "status", str(path)], check=True, capture_output=True, text=True).stdout
    assert re.search(r"export/meg\s.*0/3", before), before
    ran = subprocess.run(
        [*cli, "export", str(path), "-q"],
        check=True,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o027),  # a group that shares the run directory reads, others do not
    ).stdout
    out = Path(tmp_path / "run" / "exports" / "meg")
    documents = len(main_texts(RunDir(tmp_path / "run")))
    assert f"export meg: {documents} sequences" in ran and "train with --data-path" in ran
    assert str(out / "shard-00000") in ran
    after = subprocess.run([*cli, "status", str(path)], check=True, capture_output=True, text=True).stdout
    assert re.search(r"export/meg\s.*done", after), after
    for p in [out, *out.rglob("*")]:  # what the stage and the format's library wrote follows the umask
        assert p.stat().st_mode & 0o777 == (0o750 if p.is_dir() else 0o640), p
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "<h2>Exports</h2>" in page and "megatron" in page and str(out) in page


@pytest.mark.parametrize("fmt", ["litdata", "mds"])
def test_a_shard_written_into_many_files_is_placed_file_by_file(tiny_models, tmp_path, monkeypatch, fmt):
    """litdata's chunks and MDS's files fill up and a shard spans several: each sequence's (file,
    item, offset) still finds it."""
    from miniplm.export import litdata_chunks, mds

    monkeypatch.setattr(litdata_chunks, "CHUNK_BYTES", 400)
    monkeypatch.setattr(mds, "SIZE_LIMIT", 600)
    job = job_for(tmp_path, tiny_models, [{"name": "docs", "from": "main", "format": fmt}])
    prepare.STAGE.run(job, show_progress=False)
    export.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    tok = load_tokenizer(tiny_models["teacher"])
    texts = main_texts(rd)
    rows = provenance.read(rd.export("docs"))
    assert len(set(rows["file"].to_pylist())) > 2 * len(rd.doc_shards("main"))
    found = read_back(fmt, rd.export("docs"), rows, tok.eos_token_id, "int32")
    assert [s.tolist() for s in found] == [
        tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts.values()
    ]


def test_empty_shards_write_no_files_and_an_empty_export_says_so(tiny_models, tmp_path):
    """A token set too long for all but one shard's tokens: the other shards write no format files (an
    empty .bin or .npy is one its reader cannot map), and what was written reads back whole."""
    tok = load_tokenizer(tiny_models["teacher"])
    probe = job_for(tmp_path, tiny_models, [], "probe")
    prepare.STAGE.run(probe, show_progress=False)
    per_shard = [
        sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in pl.read_parquet(s)["text"])
        for s in RunDir(probe.run_dir).doc_shards("main")
    ]
    assert len(set(per_shard)) == len(per_shard)
    seq_len = max(per_shard) - 1  # one row from the largest shard, none from the others
    job = job_for(
        tmp_path,
        tiny_models,
        [{"name": f, "from": "tokens/rows", "format": f} for f in FORMATS],
        tokenize=[{"name": "rows", "input": "main", "seq_len": seq_len}],
    )
    prepare.STAGE.run(job, show_progress=False)
    tokenize.STAGE.run(job, show_progress=False)
    counts = export.STAGE.run(job, show_progress=False)
    rd = RunDir(job.run_dir)
    row = np.asarray(TokenRows(rd.tokens("rows"))[0]).tolist()
    for fmt in FORMATS:
        out = rd.export(fmt)
        assert counts[f"export/{fmt}"]["sequences"] == 1 and counts[f"export/{fmt}"]["shards"] == len(per_shard)
        rows = provenance.read(out)
        assert [s.tolist() for s in read_back(fmt, out, rows, tok.eos_token_id, counts[f"export/{fmt}"]["dtype"])] == [
            row
        ]
        empty = [i for i, n in enumerate(per_shard) if n != max(per_shard)]
        assert not [
            p for p in out.iterdir() if any(f"shard-{i:05d}" in p.name or f"chunk-{i}-" in p.name for i in empty)
        ]

    nothing = job_for(
        tmp_path,
        tiny_models,
        [{"name": "none", "from": "tokens/rows", "format": "litdata"}],
        "nothing",
        tokenize=[{"name": "rows", "input": "main", "seq_len": sum(per_shard)}],
    )
    prepare.STAGE.run(nothing, show_progress=False)
    tokenize.STAGE.run(nothing, show_progress=False)
    result = export.STAGE.run(nothing, show_progress=False)
    assert result["export/none"]["sequences"] == 0
    assert export.STAGE.warnings(nothing, result) == ["export none: nothing was exported"]
    assert not (RunDir(nothing.run_dir).export("none") / "index.json").exists()

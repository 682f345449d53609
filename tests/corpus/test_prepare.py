import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from miniplm.config import ConfigError
from miniplm.corpus import prepare
from miniplm.corpus.prepare import PrepareError
from miniplm.job import load_job
from miniplm.rundir import SPLITS, RunDir
from miniplm.stages import stage_config_hash
from miniplm.workers import Worker
from tests.conftest import write_jsonl


def shard_bytes(run_dir) -> dict[str, bytes]:
    docs = Path(run_dir) / "docs"
    return {str(p.relative_to(docs)): p.read_bytes() for p in sorted(docs.rglob("*")) if p.is_file()}


def read_docs(run_dir, split=None) -> pl.DataFrame:
    splits = [split] if split else SPLITS
    files = [str(p) for s in splits for p in RunDir(run_dir).doc_shards(s)]
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


@pytest.fixture
def mixed_inputs(tmp_path):
    """Good documents in JSONL, Parquet (with metadata) and text files."""
    src = tmp_path / "src"
    src.mkdir()
    jsonl_rows = [{"text": f"json doc {i}\nwith two lines and ünïcödé {i}", "url": f"http://x/{i}"} for i in range(120)]
    write_jsonl(src / "a.jsonl", jsonl_rows[:60])
    (src / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in jsonl_rows[60:])))
    pq.write_table(
        pa.table(
            {
                "body": [f"parquet doc {i}  " for i in range(80)],
                "doc_id": [f"pq-{i}" for i in range(80)],
                "kind": [f"k{i % 3}" for i in range(80)],
            }
        ),
        src / "c.parquet",
    )
    (src / "texts").mkdir()
    for i in range(15):
        (src / "texts" / f"{i:02d}.txt").write_text(f"  text file {i}\n\n")
    inputs = [
        {"path": str(src / "*.jsonl*"), "format": "jsonl", "metadata_fields": ["url"], "name": "web"},
        {
            "path": str(src / "c.parquet"),
            "format": "parquet",
            "text_field": "body",
            "id_field": "doc_id",
            "source_field": "kind",
        },
        {"path": str(src / "texts"), "format": "text"},
    ]
    expected = {r["text"]: ("web", r["url"]) for r in jsonl_rows}
    expected |= {f"parquet doc {i}  ": (f"k{i % 3}", None) for i in range(80)}
    expected |= {f"  text file {i}\n\n": ("texts", None) for i in range(15)}
    return inputs, expected


def test_round_trip_every_document_reads_back_identical(write_job, mixed_inputs, tmp_path):
    inputs, expected = mixed_inputs
    job = load_job(write_job(inputs, docs_per_shard=40, reference_fraction=0.2, heldout_fraction=0.1))
    stats = prepare.STAGE.run(job, show_progress=False)

    docs = read_docs(job.run_dir)
    assert docs.columns == ["id", "text", "source", "url"]
    assert docs.height == len(expected) == stats["kept_total"] == stats["documents_read"]
    assert {t: (s, u) for t, s, u in docs.select("text", "source", "url").iter_rows()} == expected
    assert docs["id"].n_unique() == docs.height
    assert set(docs.filter(pl.col("source").str.starts_with("k"))["id"]) == {f"pq-{i}" for i in range(80)}

    # Every split got documents, in shards of docs_per_shard rows (the last may be short).
    for split in SPLITS:
        sizes = [pq.ParquetFile(p).metadata.num_rows for p in RunDir(job.run_dir).doc_shards(split)]
        assert sizes and all(n == 40 for n in sizes[:-1]) and 0 < sizes[-1] <= 40
        assert sum(sizes) == stats["kept"][split]

    # Readable by the Hugging Face loader as well.
    import datasets

    files = [str(p) for p in RunDir(job.run_dir).doc_shards("main")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == stats["kept"]["main"]
    assert set(ds.column_names) == {"id", "text", "source", "url"}


def test_counts_add_up_on_every_kind_of_bad_input(write_job, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = b'{"text": "' + b"a" * (50 << 20) + b'"}\n'  # a 50 MB document
    write_jsonl(
        src / "1-mixed.jsonl",
        [
            {"text": "good one"},  # 1 kept
            b"{broken json\n",  # 2 malformed_json
            b'{"text": "bad \xff byte"}\n',  # 3 invalid_utf8
            {"title": "no text here"},  # 4 missing_text
            {"text": 42},  # 5 not_string
            {"text": ""},  # 6 empty
            {"text": " \n\t "},  # 7 empty
            {"text": "Good   ONE"},  # 8 duplicate of 1 after normalisation
            big,  # 9 too_long (50 MB)
            {"text": "x" * 5000},  # 10 too_long (parsed, over max_chars)
            {"text": "good two"},  # 11 kept
        ],
    )
    rows = [{"text": f"gz line {i}" + "." * 300} for i in range(3000)]
    packed = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    (src / "2-cut.jsonl.gz").write_bytes(packed[: len(packed) // 3])
    (src / "3-gone.jsonl").symlink_to(src / "does-not-exist")
    pq.write_table(pa.table({"other": ["a", "b", "c", "d"]}), src / "4-nocol.parquet")

    job = load_job(
        write_job(
            [{"path": str(src / "*.jsonl*"), "format": "jsonl"}, {"path": str(src / "*.parquet"), "format": "parquet"}],
            max_chars=4000,
        )
    )
    stats = prepare.STAGE.run(job, show_progress=False)

    gz_read = sum(1 for line in (json.loads(text) for text in _lines_until_cut(packed)))
    rejected = stats["rejected"]
    assert rejected == {
        "empty": 2,
        "invalid_utf8": 1,
        "malformed_json": 1,
        "missing_text": 1 + 4,
        "not_string": 1,
        "too_long": 2,
        "truncated_file": 1,
        "unreadable_file": 1,
    }
    assert stats["duplicates"] == 1
    assert stats["kept_total"] == 2 + gz_read
    assert stats["documents_read"] == stats["kept_total"] + stats["rejected_total"] + stats["duplicates"]
    assert stats["rejected_total"] == sum(rejected.values())
    chars = stats["characters"]
    assert chars["read"] == sum(chars["kept"].values()) + chars["duplicates"] + chars["rejected"]
    assert read_docs(job.run_dir).height == stats["kept_total"]

    # Each rejection is in the rejects file with its file and line.
    rejects = [json.loads(text) for text in (Path(job.run_dir) / "docs" / "rejects.jsonl").read_text().splitlines()]
    assert sum(r["count"] for r in rejects) == stats["rejected_total"]
    by_line = {(Path(r["file"]).name, r["line"]): r["reason"] for r in rejects}
    assert by_line[("1-mixed.jsonl", 2)] == "malformed_json"
    assert by_line[("1-mixed.jsonl", 9)] == "too_long"
    assert by_line[("2-cut.jsonl.gz", gz_read + 1)] == "truncated_file"
    assert by_line[("3-gone.jsonl", None)] == "unreadable_file"
    assert by_line[("4-nocol.parquet", None)] == "missing_text"


def _lines_until_cut(packed: bytes) -> list[bytes]:
    """The complete lines a reader gets out of a gzip stream cut at a third."""
    import zlib

    data = zlib.decompressobj(wbits=31).decompress(packed[: len(packed) // 3])
    return data.split(b"\n")[:-1]


def test_on_error_fail_stops_naming_file_and_line(write_job, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"text": "also fine"}, b"{oops\n"])
    job = load_job(write_job([{"path": str(path), "format": "jsonl"}], on_error="fail"))
    with pytest.raises(PrepareError, match=r"bad\.jsonl:3: malformed_json"):
        prepare.STAGE.run(job, show_progress=False)
    assert RunDir(job.run_dir).stage_state("prepare")["state"] == "failed"
    # Empty documents are filtering, not bad input: they do not stop the run.
    write_jsonl(path, [{"text": "fine"}, {"text": "   "}])
    assert prepare.STAGE.run(job, force=True, show_progress=False)["rejected"] == {"empty": 1}


def test_repeated_ids_are_rejected_not_kept_twice(write_job, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "three"}, {"text": "no id"}])
    job = load_job(
        write_job(
            [
                {"path": str(a), "format": "jsonl", "id_field": "id"},
                {"path": str(b), "format": "jsonl", "id_field": "id"},
            ]
        )
    )
    stats = prepare.STAGE.run(job, show_progress=False)
    assert stats["rejected"] == {"duplicate_id": 1, "missing_id": 1}
    assert sorted(read_docs(job.run_dir)["text"]) == ["one", "two"]


def test_dedup_keeps_the_first_occurrence_in_input_order(write_job, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "first", "text": "Café  au lait"}])
    b = write_jsonl(
        tmp_path / "b.jsonl", [{"id": "second", "text": "café au\nLAIT"}, {"id": "third", "text": "Cafe au lait"}]
    )
    job = load_job(
        write_job(
            [
                {"path": str(a), "format": "jsonl", "id_field": "id"},
                {"path": str(b), "format": "jsonl", "id_field": "id"},
            ],
            reference_fraction=0.0,
            heldout_fraction=0.0,
        )
    )
    stats = prepare.STAGE.run(job, show_progress=False)
    assert stats["duplicates"] == 1
    assert sorted(read_docs(job.run_dir)["id"]) == ["first", "third"]  # accents are not folded away
    assert stats["sources"]["a"] == {"kept_main": 1} and stats["sources"]["b"] == {"duplicates": 1, "kept_main": 1}


def _many_files(folder: Path, n_files=12, per_file=150):
    folder.mkdir()
    for f in range(n_files):
        rows = [{"text": f"file {f} row {r} " + "w" * (r % 17)} for r in range(per_file)]
        rows.append({"text": "shared boilerplate"})  # duplicated across files
        write_jsonl(folder / f"part-{f:02d}.jsonl", rows)
    return folder


def test_same_output_for_any_number_of_workers_and_reruns(write_job, tmp_path):
    src = _many_files(tmp_path / "src")
    inputs = [{"path": str(src / "*.jsonl"), "format": "jsonl"}]
    outputs = []
    for name, workers in [("one", 1), ("three", 3), ("again", 1)]:
        job = load_job(
            write_job(inputs, name=f"{name}.yaml", run_dir=tmp_path / name, docs_per_shard=300, num_workers=workers)
        )
        prepare.STAGE.run(job, show_progress=False)
        outputs.append(shard_bytes(job.run_dir))
    # Two array tasks splitting the sources: the second to finish writes the shards.
    job = load_job(write_job(inputs, name="split.yaml", run_dir=tmp_path / "split", docs_per_shard=300))
    assert prepare.STAGE.run(job, Worker(1, 2), show_progress=False) is None
    assert prepare.STAGE.run(job, Worker(0, 2), show_progress=False) is not None
    outputs.append(shard_bytes(job.run_dir))
    assert all(out == outputs[0] for out in outputs[1:])
    assert len(outputs[0]) > 4


def test_split_assignment_follows_the_fractions_and_the_seed(write_job, tmp_path):
    rows = [{"id": f"doc-{i}", "text": f"text {i}"} for i in range(4000)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    inputs = [{"path": str(path), "format": "jsonl", "id_field": "id"}]
    runs = {}
    for seed in (0, 1):
        job = load_job(
            write_job(
                inputs,
                name=f"s{seed}.yaml",
                run_dir=tmp_path / f"s{seed}",
                seed=seed,
                reference_fraction=0.1,
                heldout_fraction=0.05,
            )
        )
        stats = prepare.STAGE.run(job, show_progress=False)
        assert abs(stats["kept"]["reference"] - 400) < 80 and abs(stats["kept"]["heldout"] - 200) < 60
        runs[seed] = {s: set(read_docs(job.run_dir, s)["id"]) for s in SPLITS}
    assert runs[0]["reference"] != runs[1]["reference"]
    assert not runs[0]["reference"] & runs[0]["main"]


def test_rerun_skips_finished_work_and_refuses_a_changed_config(write_job, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}"} for i in range(10)])
    job_path = write_job([{"path": str(path), "format": "jsonl"}])
    job = load_job(job_path)
    first = prepare.STAGE.run(job, show_progress=False)
    before = shard_bytes(job.run_dir)
    mtimes = {p: p.stat().st_mtime_ns for p in (Path(job.run_dir) / "docs").rglob("*.parquet")}
    assert prepare.STAGE.run(job, show_progress=False) == first
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # scratch space is gone once the stage is done
    assert sorted(n for n in os.listdir(job.run_dir) if not n.startswith(".")) == [
        "docs",
        "job.yaml",
        "manifest.json",
        "records",
    ]
    manifest = json.loads((Path(job.run_dir) / "manifest.json").read_text())["stages"]["prepare"]
    assert manifest["counts"]["documents_read"] == 10 and manifest["state"] == "done"
    # the config hash covers the job's sections and the inputs' content
    assert manifest["inputs"]["settings"] == stage_config_hash(job, "prepare")
    assert set(manifest["inputs"]) == {"settings", "corpus.inputs.0"}
    assert load_job(Path(job.run_dir) / "job.yaml") == job  # the resolved config, as run

    changed = load_job(job_path, ["corpus.docs_per_shard=3"])
    with pytest.raises(ConfigError, match="prepare stage there ran with a different config"):
        prepare.STAGE.run(changed, show_progress=False)
    assert shard_bytes(job.run_dir) == before
    assert prepare.STAGE.run(changed, force=True, show_progress=False)["shards"]["main"] >= 3


def test_interrupted_shard_writing_reruns_to_the_same_output(write_job, tmp_path, monkeypatch):
    src = _many_files(tmp_path / "src", n_files=4)
    inputs = [{"path": str(src / "*.jsonl"), "format": "jsonl"}]
    clean = load_job(write_job(inputs, name="clean.yaml", run_dir=tmp_path / "clean", docs_per_shard=100))
    prepare.STAGE.run(clean, show_progress=False)

    job = load_job(write_job(inputs, name="cut.yaml", run_dir=tmp_path / "cut", docs_per_shard=100))
    from miniplm.corpus.parquet import ShardWriter

    real_close = ShardWriter._close_shard
    closed = 0

    def dies_on_third_shard(self):
        nonlocal closed
        closed += 1
        if closed == 3:
            raise KeyboardInterrupt
        real_close(self)

    monkeypatch.setattr(ShardWriter, "_close_shard", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare.STAGE.run(job, show_progress=False)
    monkeypatch.undo()
    assert RunDir(job.run_dir).stage_state("prepare")["state"] == "running"
    prepare.STAGE.run(job, show_progress=False)
    assert shard_bytes(job.run_dir) == shard_bytes(clean.run_dir)


def test_kill_9_and_rerun_gives_the_same_shards(write_job, tmp_path):
    src = _many_files(tmp_path / "src", n_files=30, per_file=400)
    inputs = [{"path": str(src / "*.jsonl"), "format": "jsonl"}]
    clean = load_job(write_job(inputs, name="clean.yaml", run_dir=tmp_path / "clean", docs_per_shard=1000))
    prepare.STAGE.run(clean, show_progress=False)

    job_path = write_job(inputs, name="killed.yaml", run_dir=tmp_path / "killed", docs_per_shard=1000, num_workers=1)
    kill_9_while_reading_then_rerun(job_path, tmp_path / "killed", after_units=5, of_units=30)
    assert shard_bytes(tmp_path / "killed") == shard_bytes(clean.run_dir)
    assert not (tmp_path / "killed" / "work").exists()


def kill_9_while_reading_then_rerun(job_path: Path, run_dir: Path, after_units: int, of_units: int) -> None:
    """`miniplm prepare` in a subprocess, killed with SIGKILL once `after_units` input units are
    done (and before all `of_units` are), then run again to the end."""
    cmd = [sys.executable, "-m", "miniplm", "prepare", str(job_path), "-q"]
    proc = subprocess.Popen(cmd, cwd=job_path.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = run_dir / "markers" / "prepare"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(markers.glob("*.done"))) < after_units:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(markers.glob("*.done")))
    assert after_units <= done_before < of_units, "the kill should land while sources are being read"
    subprocess.run(cmd, cwd=job_path.parent, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_bad_input_under_fail_stops_the_other_processes_too(write_job, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "00-bad.jsonl", [b"{broken\n"])
    for f in range(1, 40):
        write_jsonl(src / f"{f:02d}.jsonl", [{"text": f"file {f} row {r} " + "z" * 50} for r in range(3000)])
    job = load_job(write_job([{"path": str(src / "*.jsonl"), "format": "jsonl"}], on_error="fail", num_workers=2))
    with pytest.raises(PrepareError, match=r"00-bad\.jsonl:1: malformed_json"):
        prepare.STAGE.run(job, show_progress=False)
    finished = len(list((Path(job.run_dir) / "markers" / "prepare").glob("*.done")))
    assert finished < 20, f"{finished} of 39 good files were still read after the failure"


def test_limit_reads_only_the_first_records_of_each_file(write_job, mixed_inputs, tmp_path):
    inputs, expected = mixed_inputs
    for spec in inputs:
        spec["limit"] = 7
    job = load_job(write_job(inputs))
    stats = prepare.STAGE.run(job, show_progress=False)
    # a.jsonl, b.jsonl.gz and c.parquet give 7 each; the text folder its first 7 files
    assert stats["documents_read"] == 4 * 7
    texts = set(read_docs(job.run_dir)["text"])
    assert {f"json doc {i}\nwith two lines and ünïcödé {i}" for i in [*range(7), *range(60, 67)]} <= texts
    assert {f"parquet doc {i}  " for i in range(7)} <= texts and "parquet doc 7  " not in texts
    assert {f"  text file {i}\n\n" for i in range(7)} == {t for t in texts if t.startswith("  text file")}


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_prepare_ends_its_worker_processes_too(write_job, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "b.txt"):  # reading a pipe nobody writes to blocks: a unit that never ends
        os.mkfifo(src / name)
    job = write_job([{"path": str(src / name), "format": "text"} for name in ("a.txt", "b.txt")], num_workers=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "miniplm", "prepare", str(job), "-q"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list((tmp_path / "run" / "work" / "prepare").glob(".part-*"))) < 2:
            time.sleep(0.05)  # both workers are inside their unit (their part files exist)
        workers = _children(proc.pid)
        assert len(workers) >= 2
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], "workers left running after their parent ended"
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_integer_ids_beyond_64_bits_stay_distinct(write_job, tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [b'{"id": 18446744073709551616, "text": "one"}\n', b'{"id": 18446744073709551617, "text": "two"}\n'],
    )
    job = load_job(
        write_job(
            [{"path": str(path), "format": "jsonl", "id_field": "id"}], reference_fraction=0.0, heldout_fraction=0.0
        )
    )
    stats = prepare.STAGE.run(job, show_progress=False)
    assert stats["kept_total"] == 2 and stats["rejected_total"] == 0
    assert sorted(read_docs(job.run_dir)["id"]) == ["18446744073709551616", "18446744073709551617"]


def test_an_input_that_gives_no_documents_is_warned_about(write_job, tmp_path, capsys):
    from miniplm.cli import main

    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "kept"}])
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"body": "no text field"}, {"body": "none here"}])
    job = write_job([{"path": str(good), "format": "jsonl"}, {"path": str(empty), "format": "jsonl"}], num_workers=1)
    assert main(["prepare", str(job), "-q"]) == 0
    err = capsys.readouterr().err
    assert (
        f"miniplm: warning: prepare: corpus.inputs.1 ({empty}) gave no documents: all 2 records read were "
        "rejected" in err
    )
    assert "corpus.inputs.0" not in err and "no document was kept" not in err
    assert (
        main(
            [
                "prepare",
                str(job),
                "-q",
                "corpus.inputs.0.text_field=body",
                "corpus.inputs.1.text_field=nothing",
                f"run_dir={tmp_path / 'none'}",
            ]
        )
        == 0
    )
    assert "no document was kept of 3 read" in capsys.readouterr().err

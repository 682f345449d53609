import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pyzstd

from miniplm.config import InputSpec, expand_input
from miniplm.corpus.readers import RawDoc, Rejection, read_input
from tests.conftest import write_jsonl

ROWS = [{"text": f"document number {i}", "id": f"d{i}", "lang": "en"} for i in range(50)]


def items(spec, paths=None, max_chars=1000):
    return [item for _, item in read_input(spec, tuple(paths or expand_input(spec)), max_chars)]


def docs_of(found):
    return [(d.line, d.text, d.id) for d in found if isinstance(d, RawDoc)]


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_jsonl_plain_and_compressed_read_the_same(tmp_path, suffix):
    plain = write_jsonl(tmp_path / "a.jsonl", ROWS).read_bytes()
    path = tmp_path / f"b.jsonl{suffix}"
    if suffix == ".gz":
        path.write_bytes(gzip.compress(plain))
    elif suffix == ".zst":
        path.write_bytes(pyzstd.compress(plain))
    else:
        path.write_bytes(plain)
    spec = InputSpec(path=str(path), format="jsonl", id_field="id", metadata_fields=["lang"])
    found = items(spec)
    assert docs_of(found) == [(i + 1, r["text"], r["id"]) for i, r in enumerate(ROWS)]
    assert found[0].meta == {"lang": "en"}


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_truncated_compressed_jsonl_keeps_what_was_read(tmp_path, suffix):
    rows = [{"text": f"line {i} " + "x" * 200} for i in range(5000)]
    plain = write_jsonl(tmp_path / "a.jsonl", rows).read_bytes()
    packed = gzip.compress(plain) if suffix == ".gz" else pyzstd.compress(plain)
    path = tmp_path / f"cut.jsonl{suffix}"
    path.write_bytes(packed[: len(packed) // 2])
    found = items(InputSpec(path=str(path), format="jsonl"))
    docs = docs_of(found)
    assert 0 < len(docs) < len(rows)
    assert [d[1] for d in docs] == [r["text"] for r in rows[: len(docs)]]
    last = found[-1]
    assert isinstance(last, Rejection) and last.reason == "truncated_file" and last.line == len(docs) + 1


def test_a_small_zst_that_expands_hugely_is_read_in_bounded_memory(tmp_path):
    import tracemalloc

    path = tmp_path / "bomb.jsonl.zst"
    path.write_bytes(pyzstd.compress(b'{"text": "' + b"a" * 200_000_000 + b'"}\n{"text": "after"}\n'))
    tracemalloc.start()
    found = items(InputSpec(path=str(path), format="jsonl"), max_chars=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [(x.line, getattr(x, "reason", None) or x.text) for x in found] == [(1, "too_long"), (2, "after")]
    assert path.stat().st_size < 100_000 and peak < 32 << 20, f"peak {peak / 2**20:.0f} MB"


def test_jsonl_bad_lines_are_rejected_with_their_line(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"text": "good"},
            b"{not json\n",
            b'{"text": "caf\xe9"}\n',
            b"\n",  # blank: not a record
            b"[1, 2]\n",
            b'{"text": "' + b"y" * 1_200_000 + b'"}\n',  # past the line limit: skipped unparsed
            {"text": "after"},
        ],
    )
    found = items(InputSpec(path=str(path), format="jsonl"), max_chars=1000)
    summary = [(x.line, x.reason) if isinstance(x, Rejection) else (x.line, x.text) for x in found]
    assert summary == [
        (1, "good"),
        (2, "malformed_json"),
        (3, "invalid_utf8"),
        (5, "malformed_json"),
        (6, "too_long"),
        (7, "after"),
    ]


def test_unreadable_file(tmp_path):
    link = tmp_path / "gone.jsonl"
    link.symlink_to(tmp_path / "missing-target")
    [rej] = items(InputSpec(path=str(link), format="jsonl"), paths=[str(link)])
    assert rej.reason == "unreadable_file" and rej.file == str(link)


def test_parquet_string_and_binary_text(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"], "id": [1, 2]}), tmp_path / "s.parquet")
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xff\xfe"], pa.binary())}), tmp_path / "b.parquet")
    assert docs_of(items(InputSpec(path=str(tmp_path / "s.parquet"), format="parquet", id_field="id"))) == [
        (1, "a", 1),
        (2, "b", 2),
    ]
    found = items(InputSpec(path=str(tmp_path / "b.parquet"), format="parquet"))
    assert docs_of(found) == [(1, "ok", None)]
    assert isinstance(found[1], Rejection) and (found[1].reason, found[1].line) == ("invalid_utf8", 2)


def test_parquet_file_level_problems_count_every_row(tmp_path):
    pq.write_table(pa.table({"body": ["a", "b", "c"]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    [r] = items(InputSpec(path=str(tmp_path / "nocol.parquet"), format="parquet"))
    assert (r.reason, r.count) == ("missing_text", 3)
    [r] = items(InputSpec(path=str(tmp_path / "ints.parquet"), format="parquet"))
    assert (r.reason, r.count) == ("not_string", 2)
    [r] = items(InputSpec(path=str(tmp_path / "junk.parquet"), format="parquet"))
    assert r.reason == "unreadable_file"


def test_text_files_and_folders(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first file\n")
    (folder / "sub" / "b.md").write_text("second file")
    (folder / "c.txt").write_bytes(b"\xff broken")
    (folder / "d.txt").write_text("z" * 500)
    spec = InputSpec(path=str(folder), format="text")
    assert expand_input(spec) == [str(folder / n) for n in ("a.txt", "c.txt", "d.txt", "sub/b.md")]
    found = items(spec, max_chars=100)
    assert [(x.text if isinstance(x, RawDoc) else x.reason) for x in found] == [
        "first file\n",
        "invalid_utf8",
        "too_long",
        "second file",
    ]


def test_hf_save_to_disk(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"content": ["x", "y", "z"], "url": ["u1", "u2", "u3"]})
    ds.save_to_disk(tmp_path / "plain")
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(tmp_path / "dict")
    spec = InputSpec(path=str(tmp_path / "plain"), format="hf_disk", text_field="content", metadata_fields=["url"])
    found = items(spec)
    assert docs_of(found) == [(1, "x", None), (2, "y", None), (3, "z", None)]
    assert found[2].meta == {"url": "u3"}
    spec = InputSpec(path=str(tmp_path / "dict"), format="hf_disk", text_field="content", split="validation")
    assert docs_of(items(spec)) == [(1, "x", None)]
    spec = InputSpec(path=str(tmp_path / "dict"), format="hf_disk", text_field="content", split="test")
    [r] = items(spec)
    assert r.reason == "unreadable_file" and "no split 'test'" in r.detail


def test_hf_hub_unreachable_is_a_counted_rejection(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    [r] = items(InputSpec(path="nobody/no-such-dataset", format="hf_hub"))
    assert r.reason == "unreadable_file" and r.file == "nobody/no-such-dataset"


def test_a_dotted_field_reaches_into_nested_objects(tmp_path):
    # the Pile: {"text": ..., "meta": {"pile_set_name": "ArXiv"}}
    rows = [
        {"text": "a", "meta": {"pile_set_name": "ArXiv"}},
        {"text": "b", "meta": {}},
        {"text": "c", "meta": 3},
        {"text": "d", "meta.pile_set_name": "flat key"},
    ]
    spec = InputSpec(
        path=str(write_jsonl(tmp_path / "pile.jsonl", rows)), format="jsonl", source_field="meta.pile_set_name"
    )
    assert [d.source for d in items(spec)] == ["ArXiv", None, None, "flat key"]

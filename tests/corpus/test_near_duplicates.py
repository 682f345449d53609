"""Near-duplicate removal in prepare: MinHash bands per document, one decision over all of them."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from miniplm.config import NearDuplicateConfig
from miniplm.corpus import prepare
from miniplm.corpus.dedup import near_groups
from miniplm.corpus.documents import normalise
from miniplm.corpus.near_duplicates import Bands, lsh_shape
from miniplm.job import load_job
from miniplm.rundir import RunDir
from miniplm.workers import Worker
from tests.conftest import REPO, write_jsonl
from tests.corpus.test_prepare import kill_9_while_reading_then_rerun, read_docs, shard_bytes

CHAPTERS = pl.read_parquet(REPO / "data" / "sample" / "kjv.parquet").select("id", "text")


def shingles(text: str, n: int = 5) -> set[str]:
    words = normalise(text).split(" ")
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def edited(text: str, every: int, rng: np.random.Generator) -> str:
    """The text with one word in `every` replaced: a near-copy."""
    words = text.split(" ")
    for i in range(rng.integers(0, every), len(words), every):
        words[i] = "EDITED"
    return " ".join(words)


def test_bands_match_only_for_similar_texts():
    cfg = NearDuplicateConfig(threshold=0.8, num_perm=128)
    bands = Bands(cfg, seed=0)
    b, r = lsh_shape(cfg.threshold, cfg.num_perm)
    assert (b, r) == (9, 13) and b * r <= cfg.num_perm  # datasketch's choice for 0.8 and 128 permutations
    rng = np.random.default_rng(0)
    a, other = CHAPTERS["text"][0], CHAPTERS["text"][1]
    copy = edited(a, 200, rng)
    assert jaccard(a, copy) > 0.9 and jaccard(a, other) < 0.1
    ha, hc, ho = (bands(normalise(t)) for t in (a, copy, other))
    assert len(ha) == b and ha == bands(normalise(a))  # a pure function of the text
    assert sum(x == y for x, y in zip(ha, hc)) >= 1  # P(no shared band | J=0.9) = (1 - 0.9**13)**9 < 1e-3
    assert not any(x == y for x, y in zip(ha, ho))
    assert bands(normalise(a.upper().replace(" ", "  "))) == ha  # case and spacing do not matter


def test_groups_keep_the_first_row_and_chain_transitively():
    # rows 0-5; band 0 is shared by 1~4 and 2~5, band 1 by 4~5: one group {1, 2, 4, 5} kept at 1.
    # Row 3 shares a band with 0, but 3 is an exact duplicate (never among the holders), so 0 stays alone.
    shared = pl.DataFrame({"group": [0, 0, 1, 1, 2, 2], "row": [1, 4, 2, 5, 4, 5]})
    copies, keepers = near_groups(shared)
    assert copies.tolist() == [2, 4, 5] and keepers.tolist() == [1, 1, 1]
    assert [a.tolist() for a in near_groups(shared.head(0))] == [[], []]


def planted_files(folder: Path, n_files: int, per_file: int) -> dict[str, str]:
    """KJV chapters spread over files, with near-copies of earlier chapters planted in later files;
    returns each near-copy's id and the id it copies."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    texts = dict(zip(CHAPTERS["id"], CHAPTERS["text"]))
    ids = CHAPTERS["id"].to_list()[: n_files * per_file]
    copies = {}
    for f in range(n_files):
        rows = [{"id": i, "text": texts[i]} for i in ids[f * per_file : (f + 1) * per_file]]
        if f % 2 == 1:  # near-copies of a chapter in an earlier file, and of one earlier in this file
            for original in (ids[(f - 1) * per_file + 3], rows[0]["id"]):
                copy_id = f"copy-of/{original}/{f}"
                rows.append({"id": copy_id, "text": edited(texts[original], 150, rng) + "\nShared footer."})
                copies[copy_id] = original
        write_jsonl(folder / f"part-{f:02d}.jsonl", rows)
    return copies


def test_near_copies_dropped_the_same_with_any_number_of_workers(write_job, tmp_path):
    src = tmp_path / "src"
    copies = planted_files(src, n_files=6, per_file=12)
    inputs = [{"path": str(src / "*.jsonl"), "format": "jsonl", "id_field": "id"}]
    outputs = []
    for name, workers in [("one", 1), ("three", 3)]:
        job = load_job(
            write_job(
                inputs,
                name=f"{name}.yaml",
                run_dir=tmp_path / name,
                num_workers=workers,
                docs_per_shard=25,
                quality=None,
            )
        )
        stats = prepare.STAGE.run(job, show_progress=False)
        outputs.append(shard_bytes(job.run_dir))
    # two array tasks splitting the sources: the second to finish decides
    job = load_job(write_job(inputs, name="split.yaml", run_dir=tmp_path / "split", docs_per_shard=25, quality=None))
    assert prepare.STAGE.run(job, Worker(1, 2), show_progress=False) is None
    prepare.STAGE.run(job, Worker(0, 2), show_progress=False)
    outputs.append(shard_bytes(job.run_dir))
    assert outputs[0] == outputs[1] == outputs[2]

    assert stats["rejected"] == {"near_duplicate": len(copies)} and len(copies) == 6
    assert stats["documents_read"] == stats["kept_total"] + stats["rejected_total"] + stats["duplicates"]
    assert set(read_docs(job.run_dir)["id"]) == set(CHAPTERS["id"][:72])  # every chapter kept, every copy dropped
    rejects = [json.loads(line) for line in RunDir(job.run_dir).doc_rejects.read_text().splitlines()]
    assert {r["id"]: r["detail"] for r in rejects} == {c: f"a near-copy of document {o!r}" for c, o in copies.items()}
    assert all(r["reason"] == "near_duplicate" and r["line"] > 12 for r in rejects)
    by_split = stats["dropped_by_split"]
    assert sum(n["near_duplicate"] for split in by_split.values() for n in split.values()) == 6
    assert stats["sources"]["src"]["near_duplicate"] == 6


def test_the_first_in_input_order_is_kept_whichever_is_the_original(write_job, tmp_path):
    rng = np.random.default_rng(2)
    original = CHAPTERS["text"][10]
    rows = [
        {"id": "copy", "text": edited(original, 100, rng)},
        {"id": "original", "text": original},
        {"id": "other", "text": CHAPTERS["text"][11]},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    job = load_job(write_job([{"path": str(path), "format": "jsonl", "id_field": "id"}], quality=None))
    stats = prepare.STAGE.run(job, show_progress=False)
    assert sorted(read_docs(job.run_dir)["id"]) == ["copy", "other"] and stats["rejected"] == {"near_duplicate": 1}
    # off: both stay
    job = load_job(
        write_job(
            [{"path": str(path), "format": "jsonl", "id_field": "id"}],
            name="off.yaml",
            run_dir=tmp_path / "off",
            quality=None,
            near_duplicates=None,
        )
    )
    assert prepare.STAGE.run(job, show_progress=False)["kept_total"] == 3


def test_kill_9_and_rerun_keeps_the_same_documents(write_job, tmp_path):
    src = tmp_path / "src"
    planted_files(src, n_files=16, per_file=25)
    inputs = [{"path": str(src / "*.jsonl"), "format": "jsonl", "id_field": "id"}]
    clean = load_job(write_job(inputs, name="clean.yaml", run_dir=tmp_path / "clean", quality=None, num_workers=1))
    prepare.STAGE.run(clean, show_progress=False)

    job_path = write_job(inputs, name="killed.yaml", run_dir=tmp_path / "killed", quality=None, num_workers=1)
    kill_9_while_reading_then_rerun(job_path, tmp_path / "killed", after_units=4, of_units=16)
    assert shard_bytes(tmp_path / "killed") == shard_bytes(clean.run_dir)
    assert json.loads(RunDir(tmp_path / "killed").doc_stats.read_text())["rejected"] == {"near_duplicate": 16}


def test_bad_near_duplicate_settings_fail_naming_the_key(write_job, tmp_path):
    from miniplm.errors import ConfigError

    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match=r"corpus\.near_duplicates\.threshold"):
        load_job(write_job([{"path": str(path), "format": "jsonl"}], near_duplicates={"threshold": 1.5}))


def test_the_lsh_shape_is_fineweb_s_unless_a_threshold_is_given():
    from miniplm.corpus.near_duplicates import band_columns, shape

    default = NearDuplicateConfig()
    assert (default.num_perm, shape(default)) == (112, (14, 8)) and len(band_columns(default)) == 14
    assert len(Bands(default, seed=0)(normalise(CHAPTERS["text"][0]))) == 14
    tuned = NearDuplicateConfig(threshold=0.8, num_perm=128)
    assert shape(tuned) == lsh_shape(0.8, 128) == (9, 13)  # a threshold: the shape datasketch tunes for it
    with pytest.raises(ValueError, match=r"bands x rows \(14 x 10\) is more than num_perm \(112\)"):
        NearDuplicateConfig(rows=10)


def test_the_default_bands_find_more_copies_at_jaccard_08_than_the_shape_tuned_for_it():
    """P(found | J) = 1 - (1 - J**r)**b: at J = 0.8, 92% for 14 x 8 and 40% for 9 x 13. On 60 edited
    copies of real chapters near J = 0.8, the FineWeb shape finds most and the tuned one about half as
    many."""
    rng = np.random.default_rng(1)
    pairs = []
    for text in CHAPTERS["text"].to_list():
        if len(text.split(" ")) < 400:
            continue
        copy = edited(text, 45, rng)
        if 0.75 <= jaccard(text, copy) <= 0.85:
            pairs.append((normalise(text), normalise(copy)))
        if len(pairs) == 60:
            break
    assert len(pairs) == 60

    def found(cfg: NearDuplicateConfig) -> int:
        bands = Bands(cfg, seed=0)
        return sum(any(x == y for x, y in zip(bands(a), bands(b))) for a, b in pairs)

    fineweb, tuned = found(NearDuplicateConfig()), found(NearDuplicateConfig(threshold=0.8, num_perm=128))
    assert fineweb >= 48 and tuned <= 36 and fineweb > tuned, (fineweb, tuned)

"""The partitioned dedup: the same kept set for any number of partitions, processes and tasks, and
the kept set of the rule itself (the first of each text, of each id, of each group of near-copies)."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from miniplm.config import NearDuplicateConfig
from miniplm.corpus import prepare
from miniplm.corpus.documents import dedup_key, normalise
from miniplm.corpus.near_duplicates import Bands
from miniplm.job import load_job
from miniplm.workers import Worker
from tests.conftest import write_jsonl
from tests.corpus.test_near_duplicates import CHAPTERS, edited
from tests.corpus.test_prepare import read_docs, shard_bytes


def corpus(folder, n_files: int = 6, per_file: int = 14) -> list[dict]:
    """KJV chapters over several files, with exact copies, repeated ids and near-copies planted
    across files; every document, in input order."""
    folder.mkdir()
    rng = np.random.default_rng(5)
    texts = CHAPTERS["text"].to_list()
    documents = []
    for f in range(n_files):
        rows = [{"id": f"ch-{f}-{k}", "text": texts[f * per_file + k]} for k in range(per_file)]
        if f:
            earlier = documents[rng.integers(0, len(documents))]
            rows.append({"id": f"exact-{f}", "text": earlier["text"]})  # the same text: an exact duplicate
            rows.append({"id": earlier["id"], "text": f"another text under a used id {f} " * 20})
            near = documents[rng.integers(0, len(documents))]
            rows.append({"id": f"near-{f}", "text": edited(near["text"], 150, rng)})
            rows.append({"id": f"near-{f}-b", "text": edited(rows[0]["text"], 120, rng)})  # one in the same file
        write_jsonl(folder / f"part-{f:02d}.jsonl", rows)
        documents += rows
    return documents


def kept_by_the_rule(documents: list[dict], seed: int) -> set[str]:
    """What prepare keeps, computed document by document in input order, in one place: the first of
    each normalised text; then the first of each id; then, of documents sharing an LSH band (joined
    through any chain of them), the first."""
    seen_texts, seen_ids, left = set(), set(), []
    for d in documents:
        key = dedup_key(normalise(d["text"]))
        if key in seen_texts:
            continue
        seen_texts.add(key)
        if d["id"] in seen_ids:
            continue
        seen_ids.add(d["id"])
        left.append(d)
    bands = Bands(NearDuplicateConfig(), seed)
    parent = list(range(len(left)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    first_holder: dict[tuple[int, int], int] = {}
    for i, d in enumerate(left):
        for b, value in enumerate(bands(normalise(d["text"]))):
            j = first_holder.setdefault((b, value), i)
            ri, rj = root(i), root(j)
            parent[max(ri, rj)] = min(ri, rj)  # a group's root is its first document
    return {d["id"] for i, d in enumerate(left) if root(i) == i}


def _job(write_job, tmp_path, src, name, **corpus_keys):
    inputs = [{"path": str(src / "*.jsonl"), "format": "jsonl", "id_field": "id"}]
    keys = {"quality": None, "docs_per_shard": 20, "reference_fraction": 0.0, "heldout_fraction": 0.0}
    return write_job(inputs, name=f"{name}.yaml", run_dir=tmp_path / name, **(keys | corpus_keys))


def test_any_number_of_partitions_and_workers_keeps_the_first_of_each_text_id_and_group(write_job, tmp_path):
    src = tmp_path / "src"
    documents = corpus(src)
    expected = kept_by_the_rule(documents, seed=0)
    assert len(documents) - len(expected) >= 15  # five of each kind planted, some chained

    outputs = {}
    for partitions, workers in [(1, 1), (3, 2), (7, 3)]:
        name = f"p{partitions}"
        job = load_job(_job(write_job, tmp_path, src, name, dedup_partitions=partitions, num_workers=workers))
        stats = prepare.STAGE.run(job, show_progress=False)
        assert set(read_docs(job.run_dir)["id"]) == expected, name
        outputs[name] = shard_bytes(job.run_dir)
    # two array tasks: the second to finish its inputs answers the partitions
    job = load_job(_job(write_job, tmp_path, src, "tasks", dedup_partitions=7))
    assert prepare.STAGE.run(job, Worker(1, 2), show_progress=False) is None
    prepare.STAGE.run(job, Worker(0, 2), show_progress=False)
    outputs["tasks"] = shard_bytes(job.run_dir)
    assert len(set(map(lambda o: json.dumps(sorted(o.items()), default=str), outputs.values()))) == 1
    assert stats["duplicates"] == 5 and stats["rejected"]["duplicate_id"] == 5
    assert stats["kept_total"] == len(expected)


@pytest.mark.parametrize("partitions", [7])
def test_kill_9_in_a_dedup_partition_and_rerun_gives_the_same_bytes(write_job, tmp_path, partitions):
    src = tmp_path / "src"
    corpus(src, n_files=8, per_file=20)
    clean = load_job(_job(write_job, tmp_path, src, "clean", dedup_partitions=partitions, num_workers=1))
    prepare.STAGE.run(clean, show_progress=False)

    job_path = _job(write_job, tmp_path, src, "killed", dedup_partitions=partitions, num_workers=1)
    answers = tmp_path / "killed" / "work" / "prepare" / "dedup"
    cmd = [sys.executable, "-m", "miniplm", "prepare", str(job_path), "-q"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(answers.glob("*.npy"))) < 2:  # inside phase 1
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    answered = len([f for f in answers.iterdir() if f.suffix in (".npy", ".parquet")])
    assert 2 <= answered < 3 * partitions, "the kill should land among the partitions"
    assert not (tmp_path / "killed" / "docs" / "main").exists() or not list((tmp_path / "killed" / "docs").rglob("*"))
    subprocess.run(cmd, cwd=tmp_path, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert shard_bytes(tmp_path / "killed") == shard_bytes(clean.run_dir)


def test_too_few_partitions_for_the_corpus_is_warned_about(write_job, tmp_path):
    src = tmp_path / "src"
    corpus(src, n_files=1)
    job = load_job(_job(write_job, tmp_path, src, "warned", dedup_partitions=2))
    result = {"documents_read": 10_000_000, "kept_total": 9_000_000, "inputs": []}
    [warning] = prepare.STAGE.warnings(job, result)
    assert "2 dedup partitions of about 5,000,000 documents" in warning
    assert "set corpus.dedup_partitions to 3" in warning
    assert prepare.STAGE.warnings(job, {**result, "documents_read": 8_000_000}) == []

"""Every output is tied to the content it came from: inputs and models by content, earlier stages'
outputs by their records. A change makes the stages after it refuse (or redo with --force)."""

import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from miniplm.config import ConfigError
from miniplm.corpus import prepare
from miniplm.errors import StageError
from miniplm.job import load_job
from miniplm.rundir import RunDir
from miniplm.scoring import score
from miniplm.selection import rank, select
from miniplm.workers import Worker
from tests.conftest import write_jsonl
from tests.selection.test_select import run_select

WORDS = ["alpha", "bravo", "delta", "gamma"]


def _documents(path: Path, n: int, word: str) -> Path:
    return write_jsonl(
        path, [{"id": f"d{i:03d}", "text": f"{word} document {i} says {WORDS[i % 4]} " * (1 + i % 5)} for i in range(n)]
    )


def _texts(folder: Path) -> list[str]:
    return sorted(t for f in sorted(folder.glob("shard-*.parquet")) for t in pl.read_parquet(f)["text"])


def test_inputs_edited_between_two_prepare_workers_are_refused(write_job, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _documents(src / "a.jsonl", 20, "old")
    _documents(src / "b.jsonl", 20, "old")
    job = load_job(
        write_job([{"path": str(src / "*.jsonl"), "format": "jsonl", "id_field": "id", "name": "x"}], docs_per_shard=8)
    )
    assert prepare.STAGE.run(job, Worker(0, 2), show_progress=False) is None  # a.jsonl read, old
    _documents(src / "a.jsonl", 20, "new")  # the same counts and sizes, other text
    _documents(src / "b.jsonl", 20, "new")
    with pytest.raises(ConfigError, match=r"ran with a different config .*changed: corpus\.inputs\.0"):
        prepare.STAGE.run(job, Worker(1, 2), show_progress=False)  # would add b.jsonl, new
    assert not RunDir(job.run_dir).doc_shards("main")

    # --force starts over on what the inputs hold now
    assert prepare.STAGE.run(job, Worker(1, 2), force=True, show_progress=False) is None
    stats = prepare.STAGE.run(job, Worker(0, 2), show_progress=False)
    assert stats["kept_total"] == 20  # one document per id: the two files hold the same ids
    texts = [t for s in ("main", "reference", "heldout") for t in _texts(Path(job.run_dir) / "docs" / s)]
    assert texts and all(t.startswith("new ") for t in texts)


def test_an_input_edited_while_prepare_runs_fails_it(write_job, tmp_path, monkeypatch):
    path = _documents(tmp_path / "a.jsonl", 20, "old")
    job = load_job(write_job([{"path": str(path), "format": "jsonl"}], num_workers=1))
    read_units = prepare.Prepare.run_shards

    def edits_after_reading(self, run, todo):
        read_units(self, run, todo)
        _documents(path, 20, "new")

    monkeypatch.setattr(prepare.Prepare, "run_shards", edits_after_reading)
    with pytest.raises(StageError, match=r"what prepare reads changed while it ran \(corpus\.inputs\.0\)"):
        prepare.STAGE.run(job, show_progress=False)
    assert RunDir(job.run_dir).stage_state("prepare")["state"] == "failed"


def _scored_job(tmp_path: Path, tiny_models, teacher: str) -> Path:
    _documents(tmp_path / "docs.jsonl", 24, "old")
    job = {
        "run_dir": str(tmp_path / "run"),
        "seed": 1,
        "corpus": {
            "inputs": [{"path": str(tmp_path / "docs.jsonl"), "format": "jsonl", "id_field": "id"}],
            "docs_per_shard": 8,
            "reference_fraction": 0.0,
            "heldout_fraction": 0.0,
        },
        "teacher": {"model": teacher},
        "reference": {"model": tiny_models["reference"]},
        "score": {"max_length": 64, "batch_tokens": 256},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_documents_prepared_again_make_score_and_select_out_of_date(tiny_models, tmp_path):
    job = load_job(_scored_job(tmp_path, tiny_models, tiny_models["teacher"]))
    for stage in (prepare, score, rank, select):
        stage.STAGE.run(job, show_progress=False)
    selected = Path(job.run_dir) / "selected"
    assert all(t.startswith("old ") for t in _texts(selected))

    _documents(tmp_path / "docs.jsonl", 24, "new")  # the same counts and lengths
    prepare.STAGE.run(job, force=True, show_progress=False)
    with pytest.raises(ConfigError, match=r"changed: the output of prepare in docs/main \(redone since\)"):
        score.STAGE.run(job, show_progress=False)
    for force in (False, True):  # with --force, select would pair the new text with the old scores
        with pytest.raises(StageError, match=r"score is out of date: prepare was redone .* `miniplm score --force`"):
            run_select(job, force=force, show_progress=False)

    score.STAGE.run(job, force=True, show_progress=False)
    run_select(job, force=True, show_progress=False)
    assert all(t.startswith("new ") for t in _texts(selected))


def test_teacher_weights_replaced_in_place_make_score_refuse(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models["teacher"], teacher)
    job = load_job(_scored_job(tmp_path, tiny_models, str(teacher)))
    prepare.STAGE.run(job, show_progress=False)
    before = score.STAGE.run(job, show_progress=False)

    model = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    model.save_pretrained(teacher)  # the same files, the same sizes, other weights
    with pytest.raises(ConfigError, match=r"score stage there ran with a different config .*changed: teacher"):
        score.STAGE.run(job, show_progress=False)
    after = score.STAGE.run(job, force=True, show_progress=False)
    assert after["rows"] == before["rows"]


def _halve_weights(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    model.save_pretrained(folder)  # the same files, the same sizes, other weights


def test_a_stage_made_from_a_changed_model_or_file_is_out_of_date_for_every_stage_after_it(tiny_models, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models["teacher"], teacher)
    job = load_job(_scored_job(tmp_path, tiny_models, str(teacher)))
    for stage in (prepare, score, rank, select):
        stage.STAGE.run(job, show_progress=False)

    _halve_weights(teacher)  # score read the old teacher: select must not take its scores as done
    for force in (False, True):
        with pytest.raises(
            StageError,
            match=r"score is out of date: teacher changed since score read it; "
            r"run `miniplm score --force` first",
        ):
            run_select(job, force=force, show_progress=False)
    score.STAGE.run(job, force=True, show_progress=False)
    run_select(job, force=True, show_progress=False)

    # however far back: the corpus changed under prepare, which score read
    _documents(tmp_path / "docs.jsonl", 24, "new")
    with pytest.raises(
        StageError,
        match=r"score is out of date: corpus\.inputs\.0 changed since prepare read it; "
        r"run `miniplm prepare --force` first, then `miniplm score --force`",
    ):
        run_select(job, force=True, show_progress=False)


def test_new_weights_beside_the_same_tokenizer_leave_its_token_sets_done(tiny_models, tmp_path):
    from miniplm.corpus import tokenize

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models["teacher"], teacher)
    path = _scored_job(tmp_path, tiny_models, str(teacher))
    spec = yaml.safe_load(path.read_text())
    spec["tokenize"] = [{"name": "main", "input": "main", "seq_len": 8}]
    path.write_text(yaml.safe_dump(spec))
    job = load_job(path)
    prepare.STAGE.run(job, show_progress=False)
    before = tokenize.STAGE.run(job, show_progress=False)

    _halve_weights(teacher)
    assert tokenize.STAGE.run(job, show_progress=False) == before  # done: the tokenizer is the same

    config = teacher / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"eos_token"', '"bos_token": "<|x|>", "eos_token"', 1))
    with pytest.raises(
        ConfigError,
        match=r"tokenize/main stage there ran with a different config .*"
        r"changed: tokenizer",
    ):
        tokenize.STAGE.run(job, show_progress=False)

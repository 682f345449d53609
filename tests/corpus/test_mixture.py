import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from miniplm.config import ConfigError
from miniplm.corpus import prepare, tokenize
from miniplm.corpus.mixture import mixture_counts, write_mixture
from miniplm.corpus.tokens import TokenRows, write_rows
from miniplm.errors import StageError
from miniplm.job import load_job
from miniplm.workers import Worker
from tests.pipeline.jobs import write_corpus


def test_mixture_counts_keep_the_shares_without_repeating_rows():
    assert mixture_counts({"a": 100, "b": 1000}, {"a": 1, "b": 1}) == {"a": 100, "b": 100}
    assert mixture_counts({"a": 100, "b": 1000}, {"a": 0.2, "b": 0.8}) == {"a": 100, "b": 400}
    assert mixture_counts({"a": 100, "b": 30}, {"a": 0.25, "b": 0.75}) == {"a": 10, "b": 30}
    assert mixture_counts({"a": 100, "b": 30}, {"a": 1e308, "b": 1e308}) == {"a": 30, "b": 30}  # their sum overflows


def _job(tmp_path: Path, tiny_models, **extra) -> Path:
    job = {
        "run_dir": str(tmp_path / "run"),
        "seed": 4,
        "corpus": {
            "inputs": [{"path": write_corpus(tmp_path / "corpus", files=2, docs=60), "format": "jsonl"}],
            "docs_per_shard": 30,
            "reference_fraction": 0.3,
            "heldout_fraction": 0.0,
        },
        "teacher": {"model": tiny_models["teacher"]},
        "tokenize": [
            {"name": "mixed", "mix": {"main": 0.75, "ref": 0.25}, "seq_len": 8},
            {"name": "main", "input": "main", "seq_len": 8},
            {"name": "ref", "input": "reference", "seq_len": 8},
        ],
        **extra,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_a_mix_holds_rows_of_its_sets_in_their_shares(tiny_models, tmp_path):
    job = load_job(_job(tmp_path, tiny_models))
    prepare.STAGE.run(job, show_progress=False)
    # a second worker reaching the mix while the sets are still being written leaves it to the last one
    assert tokenize.STAGE.run(job, Worker(1, 2), show_progress=False)["mixed"] is None
    counts = tokenize.STAGE.run(job, Worker(0, 2), show_progress=False)["mixed"]
    run = Path(job.run_dir) / "tokens"
    main, ref, mixed = (TokenRows(run / n) for n in ("main", "ref", "mixed"))
    total = min(len(main) / 0.75, len(ref) / 0.25)  # the most rows with these shares and no row twice
    n = {"main": int(total * 0.75), "ref": int(total * 0.25)}
    assert {k: c["rows"] for k, c in counts["mix"].items()} == n and counts["rows"] == len(mixed) == sum(n.values())
    assert n["main"] == len(main) or n["ref"] == len(ref)
    # the documented draw: a random subset of each set, seeded by (seed, its place in the mix), then one shuffle
    expected = []
    for i, (rows, k) in enumerate(((main, n["main"]), (ref, n["ref"]))):
        expected += [tuple(rows[int(j)]) for j in sorted(np.random.default_rng([4, i]).permutation(len(rows))[:k])]
    order = np.random.default_rng([4, 2]).permutation(len(expected))
    assert [tuple(mixed[i]) for i in range(len(mixed))] == [expected[j] for j in order]
    assert json.loads((run / "mixed" / "mixture.json").read_text())["rows"] == len(mixed)


def test_a_mix_of_unknown_or_mismatched_sets_is_refused(tiny_models, tmp_path):
    path = _job(tmp_path, tiny_models)
    with pytest.raises(ConfigError, match="mixes 'nope', which is no token set"):
        load_job(path, ["tokenize.0.mix={nope: 1}"])
    with pytest.raises(ConfigError, match="give them one seq_len"):
        load_job(path, ["tokenize.1.seq_len=16"])
    with pytest.raises(ConfigError, match="give no input"):
        load_job(path, ["tokenize.0.input=main"])


def test_a_mix_of_an_empty_token_set_names_it(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_rows(tmp_path / "a" / "shard-00000.arrow", np.arange(40, dtype=np.int32).reshape(4, 10))
    write_rows(tmp_path / "b" / "shard-00000.arrow", np.zeros((0, 10), dtype=np.int32))
    with pytest.raises(StageError, match=r"token set 'mixed' mixes token set 'b', which holds no rows"):
        write_mixture(tmp_path / "mixed", {"a": tmp_path / "a", "b": tmp_path / "b"}, {"a": 1, "b": 1}, seed=0)
    assert not (tmp_path / "mixed").exists()

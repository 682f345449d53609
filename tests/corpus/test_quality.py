"""The quality and repetition filters: each Gopher rule as a reason, thresholds that mean what they
say, and planted noise dropped by prepare with the right reason while real text is kept."""

import json

import numpy as np
import polars as pl
import pytest

from miniplm.config import QualityConfig
from miniplm.corpus import prepare
from miniplm.corpus.documents import QUALITY_REASONS, REPETITION_REASONS, assign_split
from miniplm.corpus.quality import QualityFilter, _rule_names
from miniplm.errors import ConfigError
from miniplm.job import load_job
from miniplm.rundir import RunDir
from tests.conftest import REPO, write_jsonl
from tests.corpus.test_near_duplicates import edited
from tests.corpus.test_prepare import read_docs

SAMPLE = REPO / "data" / "sample"
PROSE = (
    "the people of the town have gone down to the river with their nets and that is where they "
    "stay until the light fails over the water "
).split()


def prose(n_words: int, rng: np.random.Generator) -> str:
    return " ".join(rng.choice(PROSE, size=n_words))


def gibberish(rng: np.random.Generator, n_words=120) -> str:
    """Pronounceable nonsense: letters in words of ordinary length, but none of them English."""
    return " ".join(
        "".join(
            rng.choice(list("bcdfgklmnprstvz"), size=k // 2).tolist()
            + rng.choice(list("aiu"), size=k - k // 2).tolist()
        )
        for k in rng.integers(3, 8, n_words)
    )


def keyboard_mash(rng: np.random.Generator, n_words=80) -> str:
    rows = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
    return " ".join("".join(rows[rng.integers(3)][: rng.integers(5, 9)] * 2) for _ in range(n_words))


def symbol_soup(rng: np.random.Generator, n_words=100) -> str:
    return " ".join("".join(rng.choice(list("0123456789$%&*+=<>~^|"), size=rng.integers(3, 7))) for _ in range(n_words))


def boilerplate() -> str:
    repeated = "Click here to subscribe to our newsletter and the deals!"
    return "\n".join(
        ["Welcome to the shop of the week.", *[repeated] * 25, "Terms of use and privacy policy apply to the site."]
    )


def test_each_rule_is_a_reason_with_its_threshold():
    rng = np.random.default_rng(0)
    check = QualityFilter(QualityConfig())
    assert check(prose(200, rng)) is None
    assert check(gibberish(rng))[0] == "few_stop_words"
    assert check(symbol_soup(rng))[0] == "non_alpha_words"
    reason, detail = check(keyboard_mash(rng))
    assert reason == "mean_word_length" and "above 10.0" in detail
    reason, detail = check(boilerplate())
    assert reason == "duplicate_lines" and "over 0.45 of lines repeat" in detail
    hashtags = " ".join(f"{w} #tag{i} #now" for i, w in enumerate(PROSE * 3))  # two '#' per three words
    assert check(hashtags)[0] == "symbol_ratio"
    spam = "buy the cheap pills and save with the best deals " * 20
    assert check(spam)[0] in ("top_ngram", "duplicate_ngrams")
    # every rule datatrove can name maps to one of the documented reasons
    assert {ours for ours, _ in _rule_names(QualityConfig()).values()} <= set(QUALITY_REASONS + REPETITION_REASONS)


def test_duplicate_line_threshold_against_a_count_by_hand():
    rng = np.random.default_rng(1)
    lines = [prose(12, rng) for _ in range(20)]
    text = "\n".join(lines + lines[:5])  # 5 of 25 lines repeat an earlier one: 0.2
    lines_only = dict(max_duplicate_line_chars=None, max_top_ngram_chars={}, max_duplicate_ngram_chars={})
    assert QualityFilter(QualityConfig(max_duplicate_lines=0.19, **lines_only))(text)[0] == "duplicate_lines"
    assert QualityFilter(QualityConfig(max_duplicate_lines=0.21, **lines_only))(text) is None


def test_rules_can_be_switched_off_and_short_documents_are_not_judged():
    rng = np.random.default_rng(2)
    text = gibberish(rng)
    assert QualityFilter(QualityConfig(min_stop_words=None))(text) is None
    no_lines = dict(max_duplicate_lines=None, max_duplicate_line_chars=None)
    assert QualityFilter(QualityConfig(**no_lines))(boilerplate())[0] == "top_ngram"  # the next rule catches it
    assert (
        QualityFilter(QualityConfig(**no_lines, max_top_ngram_chars={}, max_duplicate_ngram_chars={}))(boilerplate())
        is None
    )
    short = gibberish(rng, n_words=30)
    assert QualityFilter(QualityConfig())(short) is None  # under min_words: too short for ratios
    assert QualityFilter(QualityConfig(drop_short=True))(short) == ("short_document", "30 words (min_words is 50)")
    assert QualityFilter(QualityConfig(min_words=10))(short)[0] == "few_stop_words"


def test_bad_thresholds_fail_naming_the_key(write_job, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    inputs = [{"path": str(path), "format": "jsonl"}]
    with pytest.raises(ConfigError, match=r"corpus\.quality\.min_alpha_words"):
        load_job(write_job(inputs, quality={"min_alpha_words": 2}))
    with pytest.raises(ConfigError, match=r"corpus\.quality: .*max_top_ngram_chars"):
        load_job(write_job(inputs, quality={"max_top_ngram_chars": {2: 1.5}}))
    with pytest.raises(ConfigError, match=r"corpus\.quality\.max_symbol_ratio: unknown key"):
        load_job(write_job(inputs, quality={"max_symbol_ratio": 0.2}))


def test_planted_noise_is_dropped_with_its_reason_and_real_documents_kept(write_job, tmp_path):
    rng = np.random.default_rng(3)
    kjv = pl.read_parquet(SAMPLE / "kjv.parquet").filter(
        pl.col("id").is_in(
            ["kjv/Genesis/1", "kjv/Exodus/3", "kjv/Ruth/1", "kjv/Psalms/23", "kjv/Isaiah/40", "kjv/John/1"]
        )
    )
    docs = pl.read_parquet(SAMPLE / "python-docs.parquet").filter(
        pl.col("id").is_in(
            [
                "python-docs/bugs",
                "python-docs/c-api/allocation",
                "python-docs/howto/ipaddress",
                "python-docs/library/_thread",
            ]
        )
    )
    real = {i: t for i, t in pl.concat([kjv, docs]).select("id", "text").iter_rows()}
    assert len(real) == 10
    planted = {  # id: (text, the reason it must be dropped for)
        "noise/gibberish": (gibberish(rng), "few_stop_words"),
        "noise/symbols": (symbol_soup(rng), "non_alpha_words"),
        "noise/mash": (keyboard_mash(rng), "mean_word_length"),
        "noise/boilerplate": (boilerplate(), "duplicate_lines"),
        "copy/genesis": (edited(real["kjv/Genesis/1"], 120, rng), "near_duplicate"),
        "copy/bugs": (edited(real["python-docs/bugs"], 120, rng) + "\n\nCopied from the web.", "near_duplicate"),
    }
    rows = [{"id": i, "text": t} for i, t in real.items()] + [{"id": i, "text": t} for i, (t, _) in planted.items()]
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)
    job = load_job(write_job([{"path": str(path), "format": "jsonl", "id_field": "id", "name": "mixed"}]))
    stats = prepare.STAGE.run(job, show_progress=False)

    assert set(read_docs(job.run_dir)["id"]) == set(real)
    rejects = {r["id"]: r for r in map(json.loads, RunDir(job.run_dir).doc_rejects.read_text().splitlines())}
    assert {i: r["reason"] for i, r in rejects.items()} == {i: reason for i, (_, reason) in planted.items()}
    assert rejects["copy/genesis"]["detail"] == "a near-copy of document 'kjv/Genesis/1'"
    assert all(r["line"] == 11 + list(planted).index(i) and r["source"] == "mixed" for i, r in rejects.items())
    assert stats["documents_read"] == 16 == stats["kept_total"] + stats["rejected_total"] + stats["duplicates"]
    chars = stats["characters"]
    assert chars["read"] == sum(chars["kept"].values()) + chars["duplicates"] + chars["rejected"]
    # each filter's count, under the split the dropped document's id falls in
    expected: dict = {}
    for i, r in rejects.items():
        assert r["split"] == assign_split(i, job.seed, job.corpus.reference_fraction, job.corpus.heldout_fraction)
        reasons = expected.setdefault(r["split"], {}).setdefault("mixed", {})
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    assert stats["dropped_by_split"] == expected

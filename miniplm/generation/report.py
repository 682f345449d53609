"""A generated corpus's section of the report: lengths, finish reasons, repetition, and examples next to
their prompts."""

from __future__ import annotations

import html
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from miniplm.report.figures import figure_html, html_table, save_png, snippet  # also puts matplotlib in Agg mode
from miniplm.report.page import assemble, write_section
from miniplm.rundir import RunDir
from miniplm.schema.generate import GenerateConfig
from miniplm.schema.job import JobConfig

NGRAMS = (1, 2, 3, 4)
LOOP_N = 4  # the n-gram size whose repeats inside one text count as looping


def continuation(text: str, prompt: str) -> str:
    """The part of a generated text the model wrote (the text may start with its prompt)."""
    return text[len(prompt) :] if text.startswith(prompt) else text


def repetition(texts: list[str]) -> dict[str, float]:
    """Over words (whitespace-split): distinct-n, the share of the corpus's n-grams that are distinct, and the
    mean share of a text's LOOP_N-grams that repeat one earlier in the same text (degenerate loops)."""
    out: dict[str, float] = {}
    words = [t.split() for t in texts]
    for n in NGRAMS:
        grams = Counter(tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1))
        total = sum(grams.values())
        out[f"distinct_{n}"] = len(grams) / total if total else float("nan")
    repeated = []
    for w in words:
        grams = [tuple(w[i : i + LOOP_N]) for i in range(len(w) - LOOP_N + 1)]
        if grams:
            repeated.append(1 - len(set(grams)) / len(grams))
    out[f"repeated_{LOOP_N}gram_fraction"] = float(np.mean(repeated)) if repeated else float("nan")
    return out


def _lengths_plot(d: pl.DataFrame, entry: GenerateConfig, rd: RunDir) -> str:
    path = rd.report / f"generated-{entry.name}-lengths.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, entry.max_new_tokens, min(entry.max_new_tokens, 40) + 1)
    parts = [(r, d.filter(pl.col("finish_reason") == r)["new_tokens"].to_numpy()) for r in ("eos", "length")]
    ax.hist(
        [p for _, p in parts],
        bins=bins,
        stacked=True,
        color=["tab:green", "tab:orange"],
        label=[f"stopped at EOS ({len(p):,})" if r == "eos" else f"hit max_new_tokens ({len(p):,})" for r, p in parts],
    )
    ax.set(xlabel="new tokens per text", ylabel="texts")
    ax.legend()
    save_png(fig, path)
    return figure_html(path, f"{entry.name}: length of what the model wrote, by why it stopped")


def write_report(job: JobConfig, rd: RunDir, entry: GenerateConfig) -> dict[str, float]:
    """Hand the report the corpus's section and assemble the page; the repetition figures."""
    files = sorted(rd.generated(entry.name).glob("shard-*.parquet"))
    d = (
        pl.read_parquet(files, columns=["id", "text", "prompt", "new_tokens", "finish_reason"])
        if files
        else pl.DataFrame(
            schema={
                "id": pl.String,
                "text": pl.String,
                "prompt": pl.String,
                "new_tokens": pl.Int32,
                "finish_reason": pl.String,
            }
        )
    )
    written = [continuation(t, p) for t, p in zip(d["text"], d["prompt"])]
    rep = repetition(written)
    rd.report.mkdir(parents=True, exist_ok=True)
    n = max(d.height, 1)
    finish = {r: d.filter(pl.col("finish_reason") == r).height for r in ("eos", "length")}
    prompts = entry.prompts if isinstance(entry.prompts, str) else entry.prompts.path
    settings = (
        f"model {entry.model}, prompts {prompts}, prompt_tokens {entry.prompt_tokens}, max_new_tokens "
        f"{entry.max_new_tokens}, samples {entry.samples}, temperature {entry.temperature}, top_p "
        f"{entry.top_p}, top_k {entry.top_k}"
    )
    rows = [
        ["texts", f"{d.height:,}"],
        ["new tokens (mean per text)", f"{int(d['new_tokens'].sum() or 0):,} ({d['new_tokens'].mean() or 0:.1f})"],
        ["stopped at EOS", f"{finish['eos']:,} ({finish['eos'] / n:.1%})"],
        ["hit max_new_tokens", f"{finish['length']:,} ({finish['length'] / n:.1%})"],
    ]
    rows += [[f"distinct {k}-grams (words)", f"{rep[f'distinct_{k}']:.3f}"] for k in NGRAMS]
    rows.append([f"{LOOP_N}-grams repeated inside a text (mean)", f"{rep[f'repeated_{LOOP_N}gram_fraction']:.3f}"])
    sample = d.sample(min(entry.report_examples, d.height), seed=job.seed) if d.height else d
    examples = [
        [
            html.escape(r["id"]),
            snippet(r["prompt"]),
            snippet(continuation(r["text"], r["prompt"])),
            f"{r['new_tokens']:,}",
            r["finish_reason"],
        ]
        for r in sample.iter_rows(named=True)
    ]
    parts = [
        f"<h2>Generated corpus: {html.escape(entry.name)}</h2>",
        f"<p>{html.escape(settings)}.</p>",
        html_table(["", ""], rows, "counts"),
        _lengths_plot(d, entry, rd) if d.height else "",
        "<p>Distinct n-grams: the share of all word n-grams of the written text that are distinct (low: the "
        "corpus repeats itself). Repeated 4-grams: per text, the share of its 4-grams seen earlier in the same "
        "text (high: the model loops).</p>",
        f"<h3>Examples ({len(examples)} at random)</h3>",
        html_table(["id", "prompt", "written", "new tokens", "stopped"], examples, "examples"),
    ]
    write_section(rd, 40, f"generated-{entry.name}", "\n".join(parts))
    assemble(rd)
    return rep

"""The selection's part of the report: RUN_DIR/report/summary.json, its plots, and its sections of
index.html (counts and sources; plots and the top, bottom and random documents with their text)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from miniplm.files import atomic_write_json
from miniplm.report.figures import figure_html, html_table, save_png, snippet  # also puts matplotlib in Agg mode
from miniplm.report.page import assemble, write_section
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.select import SelectConfig
from miniplm.scoring.instances import instance_text
from miniplm.selection.drops import noise_summary, table_html
from miniplm.selection.noise_floor import NoiseFloor
from miniplm.selection.strategies import REASONS, control_counts, control_pool, counts, length_column

SCATTER_POINTS = 5000


def _finite(series: pl.Series) -> np.ndarray:
    values = series.drop_nulls().to_numpy()
    return values[np.isfinite(values)]


def _plots(d: pl.DataFrame, cut: float | None, out: Path, seed: int, unit: str) -> list[tuple[str, str]]:
    kept, dropped = d.filter(pl.col("kept")), d.filter(~pl.col("kept"))
    plots = []

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.histogram_bin_edges(_finite(d["score"]), bins=60) if d.height else 10
    ax.hist(
        [_finite(kept["score"]), _finite(dropped["score"])],
        bins=bins,
        stacked=True,
        label=["kept", "dropped"],
        color=["tab:green", "tab:gray"],
    )
    if cut is not None:
        ax.axvline(cut, color="tab:red", linestyle="--", label=f"cut {cut:.3f}")
    ax.set(xlabel="difference score: (log p_teacher - log p_reference) / tokens", ylabel=f"{unit}s")
    ax.legend()
    save_png(fig, out / "difference.png")
    plots.append(("difference.png", f"Difference score per {unit}, with the cut"))

    fig, ax = plt.subplots(figsize=(6, 6))
    sample = d.sample(min(SCATTER_POINTS, d.height), seed=seed) if d.height else d
    for label, color, part in (
        ("dropped", "tab:gray", sample.filter(~pl.col("kept"))),
        ("kept", "tab:green", sample.filter(pl.col("kept"))),
    ):
        ax.scatter(-part["reference_loss"], part["teacher_per_token"], s=6, alpha=0.6, color=color, label=label)
    lims = [*ax.get_xlim(), *ax.get_ylim()]
    ax.plot([min(lims), max(lims)], [min(lims), max(lims)], color="black", linewidth=0.8, label="teacher = reference")
    ax.set(xlabel="reference log-prob per token", ylabel="teacher log-prob per token")
    ax.legend()
    save_png(fig, out / "teacher_vs_reference.png")
    plots.append(("teacher_vs_reference.png", f"Teacher against reference (up to {SCATTER_POINTS:,} {unit}s)"))

    by_source = _by_source(d)
    fig, ax = plt.subplots(figsize=(7, 0.4 * max(by_source.height, 3) + 1))
    ax.barh(by_source["source"].to_list(), by_source["kept_fraction"].to_list(), color="tab:green")
    ax.set(xlabel=f"fraction of the source's {unit}s kept", xlim=(0, 1))
    ax.invert_yaxis()
    save_png(fig, out / "sources.png")
    plots.append(("sources.png", "Kept fraction per source"))

    fig, ax = plt.subplots(figsize=(7, 4))
    lengths = d["n_tokens"].to_numpy()
    top = max(int(lengths.max()) if len(lengths) else 1, 1)
    bins = np.unique(np.logspace(0, math.log10(top + 1), 40).astype(int))
    ax.hist(lengths, bins=bins, alpha=0.5, label="scored", color="tab:gray")
    ax.hist(kept["n_tokens"].to_numpy(), bins=bins, alpha=0.7, label="kept", color="tab:green")
    ax.set(xscale="log", xlabel=f"tokens per {unit}", ylabel=f"{unit}s")
    ax.legend()
    save_png(fig, out / "lengths.png")
    plots.append(("lengths.png", f"{unit.capitalize()} length before and after"))
    return plots


def _by_source(d: pl.DataFrame) -> pl.DataFrame:
    return (
        d.group_by("source")
        .agg(scored=pl.len(), kept=pl.col("kept").sum(), tokens_kept=pl.col("n_tokens").filter(pl.col("kept")).sum())
        .with_columns(kept_fraction=pl.col("kept") / pl.col("scored"))
        .sort("source")
    )


def _texts(rd: RunDir, wanted: pl.DataFrame, unit: str) -> tuple[dict[str, str], dict[str, str]]:
    """The text of each wanted unit (id, shard), and for instances the documents each holds."""
    texts: dict[str, str] = {}
    held: dict[str, str] = {}
    shards = rd.doc_shards("main")
    for shard in wanted["shard"].unique().to_list():
        ids = wanted.filter(pl.col("shard") == shard)["id"].to_list()
        if unit == "document":
            rows = pl.scan_parquet(shards[shard]).filter(pl.col("id").is_in(ids)).select("id", "text").collect()
            texts.update(dict(rows.iter_rows()))
            continue
        instances = (
            pl.scan_parquet(rd.score_shard(shard)).filter(pl.col("id").is_in(ids)).select("id", "docs").collect()
        )
        doc_ids = list({p["id"] for pieces in instances["docs"] for p in pieces})
        docs = dict(
            pl.scan_parquet(shards[shard])
            .filter(pl.col("id").is_in(doc_ids))
            .select("id", "text")
            .collect()
            .iter_rows()
        )
        for instance_id, pieces in instances.iter_rows():
            texts[instance_id] = instance_text(pieces, docs)
            held[instance_id] = "; ".join(f"{p['id']} [{p['start']}:{p['end']}]" for p in pieces)
    return texts, held


def _examples(d: pl.DataFrame, rd: RunDir, n: int, seed: int, unit: str) -> dict[str, pl.DataFrame]:
    scored = d.filter(pl.col("score").is_not_null() & pl.col("score").is_finite())
    picks = {
        "Top by difference score": scored.sort(["score", "id"], descending=[True, False]).head(n),
        "Bottom by difference score": scored.sort(["score", "id"]).head(n),
        f"Random {unit}s": scored.sample(min(n, scored.height), seed=seed) if scored.height else scored,
    }
    texts, held = _texts(rd, pl.concat(list(picks.values())).select("id", "shard").unique(), unit)
    return {
        title: t.with_columns(
            text=pl.col("id").replace_strict(texts, default=""), held=pl.col("id").replace_strict(held, default="")
        )
        for title, t in picks.items()
    }


def _budget(cfg: SelectConfig) -> str:
    if cfg.keep_tokens is not None:
        return f"{cfg.keep_tokens:,} tokens"
    if cfg.keep_token_fraction is not None:
        return f"{cfg.keep_token_fraction:.1%} of the scored tokens"
    return f"{cfg.keep_fraction:.1%} of the scored units"


def _controls_html(decisions: pl.DataFrame, controls: dict[str, dict], strategy: str, unit: str) -> list[str]:
    """The random controls beside the selection: the pool each is drawn from, what it kept, its tokens."""
    if not controls:
        return []
    length = length_column(decisions)
    ranked = decisions.filter(control_pool(decisions, "filtered"))
    kept = decisions.filter(pl.col("kept"))
    drawn = {"raw": "every scored unit, noise included", "filtered": "what every filter left"}
    rows = [
        [
            "selected",
            html.escape(f"what every filter left, ranked by {strategy}"),
            f"{ranked.height:,}",
            f"{int(ranked[length].sum() or 0):,}",
            f"{kept.height:,}",
            f"{int(kept[length].sum() or 0):,}",
            "selected/",
        ]
    ]
    rows += [
        [
            html.escape(c["label"]),
            drawn[c["pool"]],
            f"{c['pool_units']:,}",
            f"{c['pool_tokens']:,}",
            f"{c['kept']:,}",
            f"{c['tokens']:,}",
            f"{c['folder']}/",
        ]
        for c in controls.values()
    ]
    return [
        "<h2>Random controls</h2>",
        f"<p>Random {unit}s of the selection's tokens, each filled the same way. The raw control is drawn from "
        "every scored unit, noise included: MiniPLM's baseline without refinement, so a student on the "
        "selected text that beats it shows what the filters and the ranking gain together. The filtered one "
        "is drawn from the pool the strategy ranks, after the noise floor and the other filters: beating it "
        "shows what the ranking alone gains.</p>",
        html_table(
            ["", "drawn from", f"pool: {unit}s", "pool: tokens", f"kept {unit}s", "tokens", "folder"], rows, "controls"
        ),
    ]


def build(job: JobConfig, rd: RunDir, decisions: pl.DataFrame) -> Path:
    """The selection's sections of the report (counts and sources first, plots and examples after
    whatever later stages add), summary.json, and the page; the page's path."""
    out = rd.report
    out.mkdir(parents=True, exist_ok=True)
    cfg = job.select
    unit = job.score.unit
    kept = decisions.filter(pl.col("kept"))
    finite_kept = _finite(kept["score"])
    cut = float(finite_kept.min()) if cfg.strategy == "difference" and len(finite_kept) else None
    controls = control_counts(decisions)
    summary = {
        "strategy": cfg.strategy,
        "unit": unit,
        "budget": _budget(cfg),
        "select": cfg.model_dump(mode="json"),
        **counts(decisions),
        "cut_score": cut,
        "sources": _by_source(decisions).to_dicts(),
        **noise_summary(job, rd, decisions),
        **controls,
    }
    atomic_write_json(out / "summary.json", summary)

    plots = _plots(decisions, cut, out, job.seed, unit)
    examples = _examples(decisions, rd, cfg.report_examples, job.seed, unit)

    c = summary
    length = length_column(decisions)
    total, kept_tokens = int(decisions[length].sum() or 0), int(kept[length].sum() or 0)
    count_rows = [
        ["scored", f"{c['scored']:,}", f"{total:,}"],
        [
            "kept",
            f"{c['kept']:,} ({c['kept_fraction']['units']:.1%})",
            f"{kept_tokens:,} ({c['kept_fraction']['tokens']:.1%})",
        ],
    ]
    count_rows += [[f"dropped: {r}", f"{c['dropped'][r]:,}", ""] for r in REASONS]
    source_rows = [
        [
            html.escape(str(r["source"])),
            f"{r['scored']:,}",
            f"{r['kept']:,}",
            f"{r['kept_fraction']:.1%}",
            f"{r['tokens_kept']:,}",
        ]
        for r in summary["sources"]
    ]
    overview = [
        "<h2>Selection</h2>",
        f"<p>Strategy <b>{html.escape(cfg.strategy)}</b> over {unit}s, budget {html.escape(summary['budget'])}"
        + (f", cut at difference score {cut:.4f}" if cut is not None else "")
        + ". A token budget keeps each "
        f"{unit} in rank order that still fits, so it is spent to within one {unit}.</p>",
        "<h2>Counts</h2>",
        html_table(["", f"{unit}s", "tokens"], count_rows, "counts"),
        *_controls_html(decisions, controls, cfg.strategy, unit),
        "<h2>Sources</h2>",
        html_table(["source", "scored", "kept", "kept fraction", "tokens kept"], source_rows, "sources"),
        "<h2>Noise filters</h2>",
        f"<p>{html.escape(NoiseFloor(**summary['noise_floor']).describe())}; "
        f"{c['dropped']['low_teacher_logprob']:,} documents below it.</p>",
        "<p>Documents of the main split dropped per source: by prepare's filters (quality and repetition rules, "
        "exact and near duplicates), then by the selection's (the noise floor; too few tokens or a broken score), "
        "with the budget's cut apart.</p>",
        table_html(summary["drops"]),
    ]
    details = ["<h2>Plots</h2>", *(figure_html(out / name, caption) for name, caption in plots)]
    for title, table in examples.items():
        rows = [
            [
                html.escape(r["id"]),
                html.escape(str(r["source"])),
                f"{r['score']:.4f}",
                "yes" if r["kept"] else "no",
                f"{r['n_tokens']:,}",
                *([html.escape(r["held"])] if unit == "instance" else []),
                snippet(r["text"]),
            ]
            for r in table.iter_rows(named=True)
        ]
        headers = [
            "id",
            "source",
            "difference score",
            "kept",
            "tokens",
            *(["documents [token range]"] if unit == "instance" else []),
            "text",
        ]
        details += [f"<h2>{html.escape(title)}</h2>", html_table(headers, rows, "examples")]
    write_section(rd, 10, "selection", "\n".join(overview))
    write_section(rd, 30, "selection-details", "\n".join(details))
    return assemble(rd)

"""The selection's part of the report: RUN_DIR/report/summary.json, its plots, and its sections of
index.html (counts and sources; plots and the top, bottom and random documents with their text)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from miniplm.draws import uniform_by_id
from miniplm.files import atomic_write_json
from miniplm.report.figures import figure_html, html_table, save_png, snippet  # also puts matplotlib in Agg mode
from miniplm.report.page import assemble, write_section
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig
from miniplm.schema.select import SelectConfig
from miniplm.scoring.instances import instance_text
from miniplm.selection.drops import noise_summary, table_html
from miniplm.selection.noise_floor import NoiseFloor
from miniplm.selection.strategies import REASONS
from miniplm.selection.tally import Tally, by_source, control_counts, counts, tally

SCATTER_POINTS = 5000
SAMPLE_UNITS = 200_000  # plotted and drawn from; beyond it, a uniform sample


def _finite(series: pl.Series) -> np.ndarray:
    values = series.drop_nulls().to_numpy()
    return values[np.isfinite(values)]


def _plots(
    d: pl.DataFrame, sources: pl.DataFrame, cut: float | None, out: Path, seed: int, unit: str, of: str
) -> list[tuple[str, str]]:
    """The plots, from `d` (every unit, or a sample of them: `of` says which) and the per-source table."""
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
    plots.append(("difference.png", f"Difference score per {unit}, with the cut{of}"))

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

    by_source = sources
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
    plots.append(("lengths.png", f"{unit.capitalize()} length before and after{of}"))
    return plots


PLOTTED = ["id", "shard", "source", "score", "teacher_per_token", "reference_loss", "n_tokens", "kept"]


def _sample(files: list[Path], units: int, seed: int) -> pl.DataFrame:
    """The plotted columns of every unit, or past SAMPLE_UNITS of a uniform sample of them (by a draw
    per id), read one decision shard at a time."""
    share = SAMPLE_UNITS / units if units > SAMPLE_UNITS else None
    parts = []
    for f in files:
        rows = pl.read_parquet(f, columns=PLOTTED)
        if share is not None:  # copied: a filtered string column would keep the whole shard's ids alive
            drawn = rows.filter(uniform_by_id(rows["id"], seed) < share)
            rows = pl.DataFrame(drawn.rows(), schema=drawn.schema, orient="row")
        parts.append(rows)
    return pl.concat(parts) if parts else pl.DataFrame(schema={c: pl.Float64 for c in PLOTTED})


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


def _examples(
    decisions: pl.LazyFrame, sample: pl.DataFrame, rd: RunDir, n: int, seed: int, unit: str
) -> dict[str, pl.DataFrame]:
    finite = pl.col("score").is_not_null() & pl.col("score").is_finite()
    scored = decisions.select(PLOTTED).filter(finite)
    drawn = sample.filter(finite)
    picks = {
        "Top by difference score": scored.sort(["score", "id"], descending=[True, False]).head(n).collect(),
        "Bottom by difference score": scored.sort(["score", "id"]).head(n).collect(),
        f"Random {unit}s": drawn.sample(min(n, drawn.height), seed=seed) if drawn.height else drawn,
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


def _controls_html(t: Tally, controls: dict[str, dict], strategy: str, unit: str) -> list[str]:
    """The random controls beside the selection: the pool each is drawn from, what it kept, its tokens."""
    if not controls:
        return []
    ranked, kept = pl.col("in_filtered"), pl.col("kept")
    drawn = {"raw": "every scored unit, noise included", "filtered": "what every filter left"}
    rows = [
        [
            "selected",
            html.escape(f"what every filter left, ranked by {strategy}"),
            f"{t.total('units', ranked):,}",
            f"{t.total('length', ranked):,}",
            f"{t.total('units', kept):,}",
            f"{t.total('length', kept):,}",
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


def build(job: JobConfig, rd: RunDir, floor: dict) -> Path:
    """The selection's sections of the report (counts and sources first, plots and examples after
    whatever later stages add), summary.json, and the page; the page's path. Read from the decision
    shards in bounded memory: sums in one streaming pass, the plots from a sample past SAMPLE_UNITS."""
    out = rd.report
    out.mkdir(parents=True, exist_ok=True)
    cfg = job.select
    unit = job.score.unit
    files = decision_files(rd)
    decisions = scan_decisions(rd)
    t = tally(decisions)
    cut = None
    if cfg.strategy == "difference":
        finite_kept = pl.col("score").filter(pl.col("kept") & pl.col("score").is_finite())
        cut = decisions.select(finite_kept.min()).collect(engine="streaming").item()
    controls = control_counts(t)
    sources = by_source(t)
    summary = {
        "strategy": cfg.strategy,
        "unit": unit,
        "budget": _budget(cfg),
        "select": cfg.model_dump(mode="json"),
        **counts(t),
        "cut_score": cut,
        "sources": sources.to_dicts(),
        **noise_summary(rd, t, floor),
        **controls,
    }
    atomic_write_json(out / "summary.json", summary)

    c = summary
    sample = _sample(files, c["scored"], job.seed)
    of = f" (a sample of {sample.height:,} of {c['scored']:,} {unit}s)" if sample.height < c["scored"] else ""
    plots = _plots(sample, sources, cut, out, job.seed, unit, of)
    examples = _examples(decisions, sample, rd, cfg.report_examples, job.seed, unit)

    c = summary
    total, kept_tokens = t.total("length"), t.total("length", pl.col("kept"))
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
        *_controls_html(t, controls, cfg.strategy, unit),
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


def decision_files(rd: RunDir) -> list[Path]:
    return sorted(rd.decisions.glob("shard-*.parquet"))


def scan_decisions(rd: RunDir) -> pl.LazyFrame:
    """Every unit's decision, as a scan of the decision shards (nothing read yet)."""
    from miniplm.selection.strategies import decide

    files = decision_files(rd)
    if files:
        return pl.scan_parquet(files)
    empty = {"id": pl.String, "source": pl.String, "n_tokens": pl.Int64, "shard": pl.Int32}
    scores = pl.DataFrame(schema=empty | {"teacher_logprob": pl.Float64, "reference_logprob": pl.Float64})
    return decide(scores, SelectConfig(), 0).lazy()  # an empty main split

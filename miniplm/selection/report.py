"""The selection report: RUN_DIR/report/{index.html, summary.json, *.png}.

index.html is one file with its images inlined, so it opens from disk, from
a copy, or as an e-mail attachment, without a server.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
matplotlib.rcParams["text.parse_math"] = False  # source names are labels, not TeX ("$5 off")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from miniplm.config import JobConfig  # noqa: E402
from miniplm.rundir import RunDir, atomic_path, atomic_write_json, atomic_write_text  # noqa: E402
from miniplm.selection.strategies import REASONS, counts  # noqa: E402

SCATTER_POINTS = 5000
SNIPPET_CHARS = 300


def save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _finite(series: pl.Series) -> np.ndarray:
    values = series.drop_nulls().to_numpy()
    return values[np.isfinite(values)]


def _plots(d: pl.DataFrame, cut: float | None, out: Path, seed: int) -> list[tuple[str, str]]:
    kept, dropped = d.filter(pl.col("kept")), d.filter(~pl.col("kept"))
    plots = []

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.histogram_bin_edges(_finite(d["score"]), bins=60) if d.height else 10
    ax.hist([_finite(kept["score"]), _finite(dropped["score"])], bins=bins, stacked=True,
            label=["kept", "dropped"], color=["tab:green", "tab:gray"])
    if cut is not None:
        ax.axvline(cut, color="tab:red", linestyle="--", label=f"cut {cut:.3f}")
    ax.set(xlabel="difference score: (log p_teacher - log p_reference) / tokens", ylabel="documents")
    ax.legend()
    save_png(fig, out / "difference.png")
    plots.append(("difference.png", "Difference score per document, with the cut"))

    fig, ax = plt.subplots(figsize=(6, 6))
    sample = d.sample(min(SCATTER_POINTS, d.height), seed=seed) if d.height else d
    for label, color, part in (("dropped", "tab:gray", sample.filter(~pl.col("kept"))),
                               ("kept", "tab:green", sample.filter(pl.col("kept")))):
        ax.scatter(-part["reference_loss"], part["teacher_per_token"], s=6, alpha=0.6, color=color, label=label)
    lims = [*ax.get_xlim(), *ax.get_ylim()]
    ax.plot([min(lims), max(lims)], [min(lims), max(lims)], color="black", linewidth=0.8, label="teacher = reference")
    ax.set(xlabel="reference log-prob per token", ylabel="teacher log-prob per token")
    ax.legend()
    save_png(fig, out / "teacher_vs_reference.png")
    plots.append(("teacher_vs_reference.png", f"Teacher against reference (up to {SCATTER_POINTS:,} documents)"))

    by_source = _by_source(d)
    fig, ax = plt.subplots(figsize=(7, 0.4 * max(by_source.height, 3) + 1))
    ax.barh(by_source["source"].to_list(), by_source["kept_fraction"].to_list(), color="tab:green")
    ax.set(xlabel="fraction of the source's documents kept", xlim=(0, 1))
    ax.invert_yaxis()
    save_png(fig, out / "sources.png")
    plots.append(("sources.png", "Kept fraction per source"))

    fig, ax = plt.subplots(figsize=(7, 4))
    lengths = d["n_tokens"].to_numpy()
    top = max(int(lengths.max()) if len(lengths) else 1, 1)
    bins = np.unique(np.logspace(0, math.log10(top + 1), 40).astype(int))
    ax.hist(lengths, bins=bins, alpha=0.5, label="scored", color="tab:gray")
    ax.hist(kept["n_tokens"].to_numpy(), bins=bins, alpha=0.7, label="kept", color="tab:green")
    ax.set(xscale="log", xlabel="tokens per document", ylabel="documents")
    ax.legend()
    save_png(fig, out / "lengths.png")
    plots.append(("lengths.png", "Document length before and after"))
    return plots


def _by_source(d: pl.DataFrame) -> pl.DataFrame:
    return (d.group_by("source")
            .agg(scored=pl.len(), kept=pl.col("kept").sum(), tokens_kept=pl.col("n_tokens").filter(pl.col("kept")).sum())
            .with_columns(kept_fraction=pl.col("kept") / pl.col("scored"))
            .sort("source"))


def _examples(d: pl.DataFrame, rd: RunDir, n: int, seed: int) -> dict[str, pl.DataFrame]:
    scored = d.filter(pl.col("score").is_not_null() & pl.col("score").is_finite())
    picks = {
        "Top by difference score": scored.sort(["score", "id"], descending=[True, False]).head(n),
        "Bottom by difference score": scored.sort(["score", "id"]).head(n),
        "Random documents": scored.sample(min(n, scored.height), seed=seed) if scored.height else scored,
    }
    wanted = pl.concat(list(picks.values())).select("id", "shard").unique()
    texts: dict[str, str] = {}
    shards = rd.doc_shards("main")
    for shard in wanted["shard"].unique().to_list():
        ids = wanted.filter(pl.col("shard") == shard)["id"]
        rows = pl.scan_parquet(shards[shard]).filter(pl.col("id").is_in(ids.to_list())).select("id", "text").collect()
        texts.update(dict(rows.iter_rows()))
    return {title: t.with_columns(text=pl.col("id").replace_strict(texts, default="")) for title, t in picks.items()}


def html_table(headers: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure_html(png: Path, caption: str, alt: str | None = None) -> str:
    """The image inlined (the page opens from disk, from a copy, or as an attachment), with its caption."""
    data = base64.b64encode(png.read_bytes()).decode()
    return (f"<figure><img alt='{html.escape(alt or caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _snippet(text: str) -> str:
    cut = text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")
    return f"<pre>{html.escape(cut)}</pre>"


def build(job: JobConfig, rd: RunDir, decisions: pl.DataFrame) -> Path:
    out = rd.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    cfg = job.select
    kept = decisions.filter(pl.col("kept"))
    finite_kept = _finite(kept["score"])
    cut = float(finite_kept.min()) if cfg.strategy == "difference" and len(finite_kept) else None
    summary = {
        "strategy": cfg.strategy,
        "budget": {"keep_tokens": cfg.keep_tokens} if cfg.keep_tokens else {"keep_fraction": cfg.keep_fraction},
        "select": cfg.model_dump(mode="json"),
        **counts(decisions),
        "cut_score": cut,
        "sources": _by_source(decisions).to_dicts(),
    }
    atomic_write_json(out / "summary.json", summary)

    plots = _plots(decisions, cut, out, job.seed)
    examples = _examples(decisions, rd, cfg.report_examples, job.seed)

    c = summary
    count_rows = [["scored", f"{c['scored']:,}", f"{c['tokens_scored']:,}"],
                  ["kept", f"{c['kept']:,}", f"{c['tokens_kept']:,}"]]
    count_rows += [[f"dropped: {r}", f"{c['dropped'][r]:,}", ""] for r in REASONS]
    source_rows = [[html.escape(str(r["source"])), f"{r['scored']:,}", f"{r['kept']:,}", f"{r['kept_fraction']:.1%}",
                    f"{r['tokens_kept']:,}"] for r in summary["sources"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>miniplm selection report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
        "th{background:#f3f3f3}pre{white-space:pre-wrap;margin:0;max-width:640px;font-size:12px}"
        "figure{display:inline-block;margin:1em}img{max-width:100%}</style></head><body>",
        f"<h1>Selection report: {html.escape(str(job.run_dir))}</h1>",
        f"<p>Strategy <b>{html.escape(cfg.strategy)}</b>, budget "
        f"{html.escape(', '.join(f'{k} {v}' for k, v in summary['budget'].items()))}"
        + (f", cut at difference score {cut:.4f}" if cut is not None else "") + ".</p>",
        "<h2>Counts</h2>", html_table(["", "documents", "tokens"], count_rows, "counts"),
        "<h2>Sources</h2>", html_table(["source", "scored", "kept", "kept fraction", "tokens kept"], source_rows, "sources"),
    ]
    from miniplm.evaluation import compare  # it draws with this module's helpers

    parts += compare.report_section(job, rd, out)  # the students trained on the selection, once they exist
    parts.append("<h2>Plots</h2>")
    for name, caption in plots:
        parts.append(figure_html(out / name, caption))
    for title, table in examples.items():
        rows = [[html.escape(r["id"]), html.escape(str(r["source"])), f"{r['score']:.4f}", "yes" if r["kept"] else "no",
                 f"{r['n_tokens']:,}", _snippet(r["text"])] for r in table.iter_rows(named=True)]
        parts += [f"<h2>{html.escape(title)}</h2>",
                  html_table(["id", "source", "difference score", "kept", "tokens", "text"], rows, "examples")]
    parts.append("</body></html>")
    atomic_write_text(out / "index.html", "\n".join(parts))
    return out / "index.html"

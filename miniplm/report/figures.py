"""Building blocks of report sections: PNG figures (inlined into the page), tables, text snippets."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
matplotlib.rcParams["text.parse_math"] = False  # source names are labels, not TeX ("$5 off")
import matplotlib.pyplot as plt  # noqa: E402

from miniplm.files import atomic_path  # noqa: E402

SNIPPET_CHARS = 300


def save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def html_table(headers: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure_html(png: Path, caption: str, alt: str | None = None) -> str:
    """The image inlined (the page opens from disk, from a copy, or as an attachment), with its caption."""
    data = base64.b64encode(png.read_bytes()).decode()
    return (
        f"<figure><img alt='{html.escape(alt or caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def snippet(text: str) -> str:
    cut = text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")
    return f"<pre>{html.escape(cut)}</pre>"

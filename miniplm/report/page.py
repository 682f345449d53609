"""RUN_DIR/report/index.html: one file, images inlined, so it opens from disk, from a copy, or as
an e-mail attachment, without a server.

Stages hand the report sections of HTML (`write_section`), each stored under
RUN_DIR/report-sections/ with a number that orders it on the page; `assemble`
joins whatever sections exist into the page. A stage that reruns replaces its
own sections and leaves the others alone.
"""

from __future__ import annotations

import html
from pathlib import Path

from miniplm.files import atomic_write_text
from miniplm.rundir import RunDir

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
    "th{background:#f3f3f3}pre{white-space:pre-wrap;margin:0;max-width:640px;font-size:12px}"
    "figure{display:inline-block;margin:1em}img{max-width:100%}"
)


def write_section(rd: RunDir, order: int, name: str, body: str) -> None:
    """Hand the report a section; `order` places it on the page (lower first)."""
    for old in rd.report_sections.glob(f"*-{name}.html"):
        old.unlink()
    atomic_write_text(rd.report_sections / f"{order:03d}-{name}.html", body)


def assemble(rd: RunDir) -> Path:
    """Write the page from every section handed in so far; its path."""
    sections = [p.read_text(encoding="utf-8") for p in sorted(rd.report_sections.glob("*.html"))]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>miniplm report</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>miniplm report: {html.escape(str(rd.root))}</h1>",
        *sections,
        "</body></html>",
    ]
    rd.report.mkdir(parents=True, exist_ok=True)
    atomic_write_text(rd.report_page, "\n".join(parts))
    return rd.report_page

"""The report's section on exports: each finished export, its format, size and where it is."""

from __future__ import annotations

import html
import json

from miniplm.rundir import RunDir

DESCRIPTION = "export.json"
REPORT_ORDER = 50


def write_report(rd: RunDir, names: list[str], finishing: str | None = None) -> None:
    """The section for the exports `names` that are finished, and the one `finishing` now."""
    from miniplm.report.figures import html_table
    from miniplm.report.page import assemble, write_section

    rows = []
    for name in names:
        path = rd.export(name) / DESCRIPTION
        done = name == finishing or rd.stage_state(f"export/{name}").get("state") == "done"
        if not done or not path.exists():
            continue
        d = json.loads(path.read_text())
        rows.append(
            [
                html.escape(name),
                html.escape(d["format"]),
                html.escape(d["from"]),
                f"{d['sequences']:,} {html.escape(d['unit'])}",
                f"{d['tokens']:,}",
                html.escape(f"{d['dtype']}, {d['tokenizer']}"),
                f"<code>{html.escape(str(rd.export(name)))}</code>",
            ]
        )
    if not rows:
        return
    body = [
        "<h2>Exports</h2>",
        "<p>The refined corpus written for other trainers; each sequence traced to its source documents in "
        "the export's <code>provenance/</code>.</p>",
        html_table(["export", "format", "from", "sequences", "tokens", "token type, tokenizer", "folder"], rows),
    ]
    write_section(rd, REPORT_ORDER, "exports", "\n".join(body))
    assemble(rd)

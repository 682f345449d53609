"""What the noise filters dropped, per source and per filter, over the main split.

A main-split document is dropped by prepare's filters (counted in docs/stats.json under the split
its id falls in), or scored and then dropped by the selection's filters, or cut by the budget, or
kept. Where sources are labelled (the bundled corpus labels its noise sources), the table shows the
filters' recall on noise and what they cost real text; the budget's own cut is counted apart.
"""

from __future__ import annotations

import html
import json

from miniplm.corpus.documents import QUALITY_REASONS, REPETITION_REASONS
from miniplm.report.figures import html_table
from miniplm.rundir import RunDir
from miniplm.selection.tally import Tally, reasons_by_source

# column -> the reasons it counts, in the order documents meet them
FILTERS = {
    "quality": QUALITY_REASONS,
    "repetition": REPETITION_REASONS,
    "duplicate": ("duplicates", "duplicate_id"),
    "near_duplicate": ("near_duplicate",),
    "noise_floor": ("low_teacher_logprob",),
    "unscorable": ("non_finite_score", "too_few_tokens"),
}
BUDGET = ("source_cap", "below_cut")
# sources shown one per row, the largest first; the rest share a row (a corpus may label thousands)
SHOWN_IN_TERMINAL = 20
SHOWN_IN_REPORT = 100


def prepare_drops(rd: RunDir) -> dict[str, dict[str, int]]:
    """source -> reason -> main-split documents prepare's filters dropped (none for runs prepared
    before these counts existed)."""
    if not rd.doc_stats.exists():
        return {}
    return json.loads(rd.doc_stats.read_text()).get("dropped_by_split", {}).get("main", {})


def drop_table(prepared: dict[str, dict[str, int]], t: Tally) -> list[dict]:
    """One row per source: documents, each filter's drops (and `reasons`, every reason's count),
    filtered (their sum), budget, kept."""
    by_source: dict[str, dict[str, int]] = {s: dict(r) for s, r in prepared.items()}
    for source, reason, n in reasons_by_source(t):
        by_source.setdefault(source, {})[reason or "kept"] = n
    known = {r for reasons in FILTERS.values() for r in reasons} | set(BUDGET) | {"kept"}
    rows = []
    for source, reasons in sorted(by_source.items()):
        row: dict = {"source": source, "documents": sum(reasons.values())}
        row |= {name: sum(reasons.get(r, 0) for r in members) for name, members in FILTERS.items()}
        row["other"] = sum(n for r, n in reasons.items() if r not in known)  # a rule this table does not know
        row["filtered"] = sum(row[name] for name in FILTERS) + row["other"]
        row["budget"] = sum(reasons.get(r, 0) for r in BUDGET)
        row["kept"] = reasons.get("kept", 0)
        row["reasons"] = dict(sorted((r, n) for r, n in reasons.items() if r != "kept" and n))
        rows.append(row)
    return rows


def collapsed(rows: list[dict], limit: int) -> list[dict]:
    """At most `limit` sources (those with the most documents, in name order), the others summed in one row."""
    if len(rows) <= limit:
        return rows
    largest = sorted(rows, key=lambda r: (-r["documents"], r["source"]))
    shown, rest = largest[:limit], largest[limit:]
    other: dict = {"source": f"({len(rest):,} other sources)"}
    for key in rows[0]:
        if key == "reasons":
            other[key] = {}
            for r in rest:
                for reason, n in r[key].items():
                    other[key][reason] = other[key].get(reason, 0) + n
        elif key != "source":
            other[key] = sum(r[key] for r in rest)
    return sorted(shown, key=lambda r: r["source"]) + [other]


def noise_summary(rd: RunDir, t: Tally, floor: dict, limit: int | None = None) -> dict:
    """The noise floor the selection used and the drop table (`limit` sources at most), for summary.json
    and the manifest."""
    rows = drop_table(prepare_drops(rd), t)
    return {
        "noise_floor": floor,
        "drops": collapsed(rows, limit) if limit else rows,
    }


def _columns(rows: list[dict]) -> list[str]:
    shown = [c for c in FILTERS if c not in ("unscorable",) or any(r[c] for r in rows)]
    return shown + (["other"] if any(r["other"] for r in rows) else [])


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def table_lines(rows: list[dict]) -> list[str]:
    """The drop table for the terminal."""
    columns = _columns(rows)
    width = max([len("source"), *(len(r["source"]) for r in rows)])
    head = (
        f"  {'source':<{width}} {'documents':>9} "
        + " ".join(f"{c:>{max(len(c), 5)}}" for c in columns)
        + f" {'filtered':>16} {'budget':>7} {'kept':>6}"
    )
    lines = [head]
    for r in rows:
        filtered = f"{r['filtered']} ({_percent(r['filtered'], r['documents'])})"
        lines.append(
            f"  {r['source']:<{width}} {r['documents']:>9,} "
            + " ".join(f"{r[c]:>{max(len(c), 5)},}" for c in columns)
            + f" {filtered:>16} {r['budget']:>7,} {r['kept']:>6,}"
        )
    return lines


def table_html(rows: list[dict]) -> str:
    """The drop table for the report: per filter, then every reason."""
    rows = collapsed(rows, SHOWN_IN_REPORT)
    columns = _columns(rows)
    summary = [
        [
            html.escape(r["source"]),
            f"{r['documents']:,}",
            *(f"{r[c]:,}" for c in columns),
            f"{r['filtered']:,}",
            _percent(r["filtered"], r["documents"]),
            f"{r['budget']:,}",
            f"{r['kept']:,}",
            _percent(r["documents"] - r["kept"], r["documents"]),
        ]
        for r in rows
    ]
    reasons = sorted({reason for r in rows for reason in r["reasons"]})
    detail = [[html.escape(r["source"]), *(f"{r['reasons'].get(x, 0):,}" for x in reasons)] for r in rows]
    return "\n".join(
        [
            html_table(
                ["source", "documents", *columns, "filtered", "filtered %", "budget", "kept", "dropped %"],
                summary,
                "drops",
            ),
            "<p>Every reason, per source:</p>",
            html_table(["source", *reasons], detail, "drop-reasons"),
        ]
    )

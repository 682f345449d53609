#!/usr/bin/env python3
"""The one table of benchmarks/gpu/evidence.sh: what ran, on what, how long, and what it showed.

    python benchmarks/gpu/evidence_table.py OUT_DIR

Reads what the steps left in OUT_DIR (card.txt, started.txt, finished.txt, steps.jsonl, parts.json,
the manifests, results.json and comparison.md) and writes OUT_DIR/table.md: the parts of the corpus
(packages, documents, characters, tokens), each step's time, eval's comparison (held-out loss on
the held-out packages, ± the spread over seeds, tokens and FLOPs, the unigram floors), and the
verdict: whether the selected student's held-out loss is below each random control's by more than
the larger of their spreads. Whatever a cut step left out is said, not guessed.
"""

from __future__ import annotations

import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

CORPUS = "heldout-packages"
CONTROLS = ("random", "random-filtered")


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _tokens(manifest: dict | None, stage: str) -> str:
    counts = (manifest or {}).get("stages", {}).get(stage, {}).get("counts", {})
    return f"{counts['tokens']:,}" if "tokens" in counts else "-"


def parts_table(out: Path) -> list[str]:
    parts = _json(out / "parts.json")
    if parts is None:
        return ["The corpus step left no parts.json."]
    run = _json(out / "run-manifest.json")
    tokens = {
        "teacher": _tokens(_json(out / "teacher-manifest.json"), "tokenize/all"),
        "reference": _tokens(_json(out / "reference-manifest.json"), "tokenize/all"),
        "pool": _tokens(run, "score"),
        "heldout": "-",
    }
    lines = ["| part | packages | documents | characters | tokens trained or scored |", "|---|---|---|---|---|"]
    for part, c in parts.items():
        lines.append(
            f"| {part} | {c['packages']:,} | {c['documents']:,} | {c['characters']:,} | {tokens.get(part, '-')} |"
        )
    return lines


def training_table(out: Path) -> list[str]:
    """Each trained model's steps, tokens and training FLOPs, from the manifests the steps kept."""
    lines = ["| model | steps | tokens | training FLOPs |", "|---|---|---|---|"]
    manifests = {name: _json(out / f"{name}-manifest.json") for name in ("teacher", "reference", "run")}
    for source, manifest in manifests.items():
        for stage, state in (manifest or {}).get("stages", {}).items():
            counts = state.get("counts") or {}
            if stage.startswith("train/") and "tokens" in counts:
                name = source if source != "run" else stage.removeprefix("train/")
                flops = counts.get("flops", {}).get("by", {}).get("training")
                lines.append(f"| {name} | {counts['step']} | {counts['tokens']:,} | {flops:.3g} |")
    return lines if len(lines) > 2 else ["No model finished training."]


def _losses(results: dict, group: str) -> list[float]:
    return [
        r["lm"][CORPUS]["loss"]
        for name, r in results.items()
        if (name == group or name.startswith(f"{group}.seed")) and CORPUS in r.get("lm", {})
    ]


def verdict(results: dict | None) -> list[str]:
    if results is None:
        return ["No verdict: eval did not finish (no results.json)."]
    selected = _losses(results, "selected")
    if not selected:
        return ["No verdict: the selected student has no held-out loss."]
    lines = []
    for control in CONTROLS:
        other = _losses(results, control)
        if not other:
            lines.append(f"- against {control}: not measured")
            continue
        spread = max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in (selected, other))
        gap = statistics.mean(other) - statistics.mean(selected)
        beats = gap > spread and len(selected) > 1 and len(other) > 1
        lines.append(
            f"- against {control}: selected {statistics.mean(selected):.4f}, {control} {statistics.mean(other):.4f} "
            f"(seeds: {len(selected)}, {len(other)}); gap {gap:+.4f}, larger spread {spread:.4f}: "
            + ("**beats it by more than the spread**" if beats else "does not beat it by more than the spread")
        )
    return lines


def main() -> None:
    out = Path(sys.argv[1])
    card = _read(out / "card.txt") or "unknown card"
    started, finished = _read(out / "started.txt"), _read(out / "finished.txt")
    minutes = "-"
    if started and finished:
        minutes = f"{(datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds() / 60:.1f}"
    lines = [f"**{card}**, started {started or '-'}, {minutes} minutes", "", "## The corpus, by package", ""]
    lines += parts_table(out)
    lines += ["", "## Training: tokens and FLOPs", ""] + training_table(out)
    lines += ["", "## Steps", ""]
    for line in (out / "steps.jsonl").read_text().splitlines() if (out / "steps.jsonl").exists() else []:
        step = json.loads(line)
        failed = "timed out" if step["rc"] in (124, 137) else f"failed (exit {step['rc']})"
        state = "ok" if step["rc"] == 0 else failed
        lines.append(f"- {step['step']}: {step['seconds']:.0f} s (limit {step['limit']} s), {state}")
    lines += ["", f"## Held-out loss on the held-out packages ({CORPUS})", ""]
    lines += [_read(out / "comparison.md") or "eval did not finish: no comparison."]
    lines += ["", "## Does the selected student beat both random controls?", ""]
    lines += verdict(_json(out / "results.json"))
    lines += ["", "The selection report (difference-score histogram, kept and dropped examples): report/index.html"]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

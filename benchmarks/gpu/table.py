#!/usr/bin/env python3
"""The one table of benchmarks/gpu/run.sh: each figure against its naive baseline and its target.

    python benchmarks/gpu/table.py OUT_DIR

Reads OUT_DIR/steps.jsonl (each step's exit code and seconds), OUT_DIR/bench.jsonl
(the benchmarks' figures) and OUT_DIR/card.txt; prints the table and writes it
to OUT_DIR/table.md. A step that failed or ran out of time says so in its row,
with the last line of its log; the others are shown all the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# figure -> (target in words, test on the measured numbers)
SCORE_TARGETS = {
    "qwen-1.8b": (">= 150k tok/s and >= 4x naive", lambda best, x: best >= 150e3 and x >= 4),
    "ref-104m": (">= 1M tok/s", lambda best, x: best >= 1e6),
}
TRAIN_TARGETS = {"qwen-1.2b": 0.48, "qwen-200m": 0.40}
DEMO_TARGET_S = 120


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:160] if lines else "empty log"


def _status(step: dict | None, out: Path) -> str:
    if step is None:
        return "not run"
    if step["rc"] == 0:
        return ""
    why = "timed out" if step["rc"] in (124, 137) else f"failed (exit {step['rc']})"
    last = _last_line(out / "logs" / (step["step"] + ".log"))
    return f"{why} after {step['seconds']:.0f} s: logs/{step['step']}.log: {last}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _missing(label: str, step: dict | None, target: str, out: Path) -> list[str]:
    """The row of a figure its step did not produce."""
    return [label, _status(step, out) or "not measured", "-", "-", "-", target, "not measured"]


def _train_rows(preset: str, found: list[dict], steps: dict, out: Path) -> list[list[str]]:
    """One row per trainer variant measured for `preset` (the last figure of each); the target is
    judged on the fastest."""
    target = TRAIN_TARGETS.get(preset)
    words = f">= {target:.0%} MFU (datasheet)" if target else "-"
    label = f"train {preset}, {found[-1]['seq_len'] if found else 1024}-token rows"
    variants = {b["variant"]: b for b in found}
    plain = variants.pop("plain", None)
    if not variants:
        return [_missing(label, steps.get("train"), words, out)]
    best = max(variants.values(), key=lambda b: b["tok_s"])
    table = []
    for name, b in variants.items():
        sheet = b.get("mfu_datasheet")
        shown = f"{sheet:.1%} MFU datasheet" if sheet is not None else "no datasheet peak"
        naive = f"{plain['tok_s']:,.0f} tok/s plain torch" if plain else "not measured"
        judged = b is best and target is not None
        table.append(
            [
                f"{label}: {name}, micro-batch {b['micro']}",
                f"{b['tok_s']:,.0f} tok/s, {shown}"
                + (f", {b['peak_memory_gb']:.0f} GB peak" if b.get("peak_memory_gb") is not None else ""),
                naive,
                f"{b['tok_s'] / plain['tok_s']:.2f}x" if plain else "-",
                f"{b['mfu']:.1%} of {b['matmul_tflops']:.3g} TFLOP/s measured",
                words if judged else "-",
                _yes(sheet is not None and sheet >= target) if judged else "-",
            ]
        )
    return table


def rows(out: Path) -> list[list[str]]:
    steps = {s["step"]: s for s in _lines(out / "steps.jsonl")}
    bench = _lines(out / "bench.jsonl")
    table = []

    tests = steps.get("tests")
    summary = out / "logs" / "tests.log"
    result = _last_line(summary) if summary.exists() else "not run"
    table.append(
        [
            "GPU-marked tests",
            result,
            "-",
            "-",
            "-",
            "all pass",
            _yes(tests is not None and tests["rc"] == 0) if tests else "not run",
        ]
    )

    teacher, demo = steps.get("demo-teacher"), steps.get("demo")
    if demo is not None and demo["rc"] == 0:
        extra = f" (+ {teacher['seconds']:.0f} s training its teacher)" if teacher and teacher["rc"] == 0 else ""
        table.append(
            [
                "demo-gpu job end to end (bf16 on a GPU)",
                f"{demo['seconds']:.0f} s{extra}",
                "-",
                "-",
                "-",
                f"<= {DEMO_TARGET_S} s",
                _yes(demo["seconds"] <= DEMO_TARGET_S),
            ]
        )
    else:
        failed = teacher if teacher is not None and teacher["rc"] != 0 else demo
        table.append(_missing("demo-gpu job end to end (bf16 on a GPU)", failed, f"<= {DEMO_TARGET_S} s", out))

    measured = [b["shape"] for b in bench if b["bench"] == "score"]
    for shape in dict.fromkeys([*SCORE_TARGETS, *measured]):
        target, met = SCORE_TARGETS.get(shape, ("-", lambda best, x: True))
        found = [b for b in bench if b["bench"] == "score" and b["shape"] == shape]
        label = f"score, {shape} shape, web-like lengths"
        if not found:
            table.append(_missing(label, steps.get("score"), target, out))
            continue
        b = found[-1]
        speeds = {r["name"]: r["tok_s"] for r in b["rows"]}
        plain = speeds.pop("plain")
        if not speeds:
            table.append(_missing(label, steps.get("score"), target, out))
            continue
        best = max(speeds, key=speeds.get)
        x = speeds[best] / plain
        limit = f"{speeds[best] / b['limit_tok_s']:.0%} of measured matmul rate" + (
            f", {speeds[best] / b['sheet_tok_s']:.0%} of datasheet" if b.get("sheet_tok_s") else ""
        )
        naive = f"{plain:,.0f} plain" + (f"; {speeds['sorted']:,.0f} sorted" if "sorted" in speeds else "")
        table.append(
            [
                label,
                f"{speeds[best]:,.0f} tok/s ({best})",
                naive,
                f"{x:.1f}x",
                limit,
                target,
                _yes(met(speeds[best], x)) if target != "-" else "-",
            ]
        )

    measured = [b["preset"] for b in bench if b["bench"] == "train"]
    for preset in dict.fromkeys([*TRAIN_TARGETS, *measured]):
        table += _train_rows(preset, [b for b in bench if b["bench"] == "train" and b["preset"] == preset], steps, out)

    gaps = {(b["preset"], b["variant"]): b for b in bench if b["bench"] == "gap"}
    for (preset, variant), b in gaps.items():
        table.append(
            [
                f"loss of {preset} over {b['steps']} steps: {variant}",
                f"{b['tail_loss']:.4f} over the last tenth",
                "-",
                "-",
                f"{b['gap']:+.4f} against the first variant",
                "-",
                "-",
            ]
        )
    if not gaps and steps.get("gap"):
        table.append(_missing("loss gap (float8 against bf16)", steps.get("gap"), "-", out))

    kd = [b for b in bench if b["bench"] == "kd"]
    if not kd:
        table.append(_missing("train with KD (online, offline top-k)", steps.get("kd"), "-", out))
    for b in {b.get("compile", "off"): b for b in kd}.values():  # the last figures of each compile setting
        speeds = {r["name"]: r for r in b["rows"]}
        plain = speeds.pop("no KD")
        for name, r in speeds.items():
            table.append(
                [
                    f"train {b['student']} with {name}, teacher {b['teacher']}, compile {b.get('compile', 'off')}",
                    f"{r['tok_s']:,.0f} tok/s, {r['mfu']:.1%} MFU measured (teacher FLOPs counted)",
                    f"{plain['tok_s']:,.0f} tok/s no KD",
                    f"{r['tok_s'] / plain['tok_s']:.2f}x",
                    "-",
                    "-",
                    "-",
                ]
            )
    return table


def main() -> None:
    out = Path(sys.argv[1])
    card = (out / "card.txt").read_text().strip() if (out / "card.txt").exists() else "unknown card"
    header = ["figure", "measured", "naive (same run)", "ratio to naive", "fraction of limit", "target", "met"]
    lines = [f"**{card}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(out)]
    lines.append("")
    for step in _lines(out / "steps.jsonl"):
        state = "ok" if step["rc"] == 0 else _status(step, out)
        lines.append(f"- step {step['step']}: {step['seconds']:.0f} s (limit {step['limit']} s), {state}")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

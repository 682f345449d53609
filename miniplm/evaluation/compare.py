"""The comparison across models: RUN_DIR/eval/{results.json, comparison.md, comparison.png}, and the
students' section of the report (held-out loss curves and the evaluation table)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib.pyplot as plt

from miniplm.config import JobConfig
from miniplm.files import atomic_write_json, atomic_write_text
from miniplm.report.figures import figure_html, html_table, save_png  # also puts matplotlib in Agg mode
from miniplm.report.page import assemble, write_section
from miniplm.rundir import RunDir


def table(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per model; loss and perplexity per corpus, accuracy per task, the average."""
    corpora = list(dict.fromkeys(c for r in results.values() for c in r["lm"]))
    tasks = list(dict.fromkeys(t for r in results.values() for t in r.get("zero_shot", {}).get("tasks", {})))
    compute = any(r.get("compute") for r in results.values())
    headers = ["model", "role", "trained on"] + (["train FLOPs", "teacher FLOPs"] if compute else [])
    headers += [h for c in corpora for h in (f"{c} loss", f"{c} ppl", f"{c} bpb")]
    headers += [f"{t} ({_metric(results, t)})" for t in tasks] + (["average"] if tasks else [])
    rows = []
    for name, r in results.items():
        row = [name, r["role"], r.get("trained_on") or ""]
        if compute:
            flops = r.get("compute") or {}
            row += [f"{flops['flops']:.3g}", f"{flops['teacher_flops']:.3g}"] if flops else ["", ""]
        for c in corpora:
            lm = r["lm"].get(c)
            row += [f"{lm['loss']:.4f}", f"{lm['perplexity']:.2f}", f"{lm['bits_per_byte']:.4f}"] if lm else [""] * 3
        zs = r.get("zero_shot", {})
        row += [f"{100 * zs['tasks'][t]['value']:.1f}" if t in zs.get("tasks", {}) else "" for t in tasks]
        if tasks:
            row.append(f"{100 * zs['average']:.1f}" if zs.get("average") is not None else "")
        rows.append(row)
    return headers, rows


def _metric(results: dict[str, dict], task: str) -> str:
    for r in results.values():
        if task in r.get("zero_shot", {}).get("tasks", {}):
            return r["zero_shot"]["tasks"][task]["metric"]
    return ""


def markdown(results: dict[str, dict]) -> str:
    headers, rows = table(results)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], path: Path) -> None:
    """Bars per model: the held-out loss (or the first corpus's), and the zero-shot average."""
    names = list(results)
    corpus = next((c for r in results.values() for c in r["lm"]), None)
    with_tasks = any(r.get("zero_shot", {}).get("average") is not None for r in results.values())
    panels = [p for p in (corpus, "zero-shot" if with_tasks else None) if p]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 0.45 * len(names) + 1.5),
                             squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "zero-shot":
            values = [100 * (results[n].get("zero_shot", {}).get("average") or 0) for n in names]
            ax.set(xlabel="zero-shot average accuracy (%)")
        else:
            values = [results[n]["lm"].get(panel, {}).get("loss", float("nan")) for n in names]
            ax.set(xlabel=f"{panel} loss per token (nats, lower is better)")
            finite = [v for v in values if v == v]
            if finite:  # losses differ in the second decimal: start the axis near them
                ax.set_xlim(min(finite) - 0.1 * (max(finite) - min(finite) + 0.1), max(finite) * 1.01)
        ax.barh(names, values, color=["tab:green" if results[n]["role"] == "student" else "tab:gray" for n in names])
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3f}" if panel != "zero-shot" else f" {v:.1f}", va="center", fontsize=9)
        ax.invert_yaxis()
    save_png(fig, path)


def write(rd: RunDir, results: dict[str, dict]) -> None:
    out = rd.eval
    atomic_write_json(rd.eval_results, results)
    atomic_write_text(out / "comparison.md", markdown(results))
    plot(results, out / "comparison.png")


def summary(results: dict[str, dict]) -> dict:
    """Per model, the headline numbers (the manifest's counts)."""
    return {name: {"lm_loss": {c: v["loss"] for c, v in r["lm"].items()},
                   "zero_shot_average": r.get("zero_shot", {}).get("average")} for name, r in results.items()}


def _curves(job: JobConfig, rd: RunDir, path: Path) -> bool:
    """Held-out loss against step for every student with one in its metrics; False when none has."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for student in job.students:
        try:
            lines = rd.metrics(student.name).read_text().splitlines()
        except FileNotFoundError:
            continue
        points = sorted({m["step"]: m["heldout_loss"] for m in map(json.loads, lines)
                         if m.get("heldout_loss") is not None}.items())
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=f"{student.name} ({student.tokens})")
            drawn = True
    ax.set(xlabel="training step", ylabel="held-out loss per token")
    if drawn:
        ax.legend()
        save_png(fig, path)
    else:
        plt.close(fig)
    return drawn


def report(job: JobConfig, rd: RunDir) -> Path:
    """Hand the report the students' section, and assemble the page; its path."""
    write_section(rd, 20, "students", "\n".join(report_section(job, rd, rd.report)))
    return assemble(rd)


def report_section(job: JobConfig, rd: RunDir, out: Path) -> list[str]:
    """HTML for the report: students' held-out loss curves and the evaluation table, when they exist."""
    out.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    if _curves(job, rd, out / "students.png"):
        parts.append(figure_html(out / "students.png", "Students' held-out loss during training",
                                 alt="held-out loss curves"))
    try:
        results = json.loads(rd.eval_results.read_text())
    except FileNotFoundError:
        results = None
    if results:
        headers, rows = table(results)
        parts.append(html_table(headers, [[html.escape(c) for c in row] for row in rows], "comparison"))
        parts.append("<p>Loss in nats per token and perplexity (lower is better; comparable between models "
                     "with the same tokenizer and context length), bits per byte of text (comparable across "
                     "tokenizers); accuracies in % (acc_norm where the task has it, else acc). Full results: "
                     "eval/results.json.</p>")
    return (["<h2>Students</h2>", *parts]) if parts else []

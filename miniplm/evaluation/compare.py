"""The comparison across models: RUN_DIR/eval/{results.json, comparison.md, comparison.png}, and the
students' section of the report (held-out loss curves, the table, results against compute).

One row per model; a student trained with several seeds (eval.seeds) is one
row with the mean and the spread (sample standard deviation) of its replicas,
so a difference between students can be read against the noise between runs
of one recipe. A unigram row per token set the students trained on
(unigram.py) is the floor their losses are read against. Compute columns:
each student's training FLOPs (with an online KD teacher's forward passes,
shown apart when a student has them) and its total with its share of the
teacher and reference work (miniplm/compute.py).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt

from miniplm.compute import RULE
from miniplm.evaluation.plots import against_compute, headline, spread
from miniplm.files import atomic_write_json, atomic_write_text
from miniplm.replicas import base_name
from miniplm.report.figures import figure_html, html_table, save_png  # also puts matplotlib in Agg mode
from miniplm.report.page import assemble, write_section
from miniplm.rundir import RunDir
from miniplm.schema.job import JobConfig

COMPUTE_HEADERS = {"training": "train FLOPs", "teacher": "of which KD teacher", "total": "total FLOPs"}
UNIGRAM_NOTE = (
    "unigram (NAME): the unigram model of token set NAME (its tokens counted, add-one smoothed over the "
    "tokenizer's vocabulary), scored on exactly the tokens the students are: a floor; a student not "
    "clearly below it has learned little beyond how common each token is."
)
FLOPS_NOTE = (
    "train FLOPs: the student's own training, forward and backward, plus for online KD the teacher's "
    "forward passes in the loop (of which KD teacher, when a student has them): the paper's compute axis, "
    "which leaves MiniPLM's offline scoring uncharged. total FLOPs: training plus the student's share of "
    "the scoring, generation, pruning and stored teacher log-probs its data and weights needed."
)


def groups(results: dict[str, dict]) -> dict[str, list[str]]:
    """Models by the student they repeat (a model that is no replica is its own group), in order."""
    out: dict[str, list[str]] = {}
    for name, r in results.items():
        out.setdefault(base_name(name) if r["role"] == "student" else name, []).append(name)
    return out


def _cell(
    rs: list[dict], get: Callable[[dict], float | None], fmt: str, scale: float = 1.0, *, with_spread: bool = True
) -> str:
    values = [v * scale for v in map(get, rs) if v is not None]
    if len(values) < len(rs) or not values:
        return ""
    mean, std = spread(values)
    return format(mean, fmt) + (f" ± {format(std, fmt)}" if std is not None and with_spread else "")


def _lm(corpus: str, key: str, packed: bool = False) -> Callable[[dict], float | None]:
    def get(r: dict) -> float | None:
        lm = r["lm"].get(corpus)
        lm = lm.get("packed") if lm is not None and packed else lm
        return None if lm is None else lm.get(key)

    return get


def _task(task: str) -> Callable[[dict], float | None]:
    return lambda r: r.get("zero_shot", {}).get("tasks", {}).get(task, {}).get("value")


def _compute(key: str) -> Callable[[dict], float | None]:
    return lambda r: (r.get("compute") or {}).get(key)


def table(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per model (a student's seed replicas together); loss, perplexity and
    bits per byte per corpus, the loss on packed instances, accuracy per task and their average,
    training and total FLOPs, and the number of seeds when any student has several."""
    corpora = list(dict.fromkeys(c for r in results.values() for c in r["lm"]))
    packed = [c for c in corpora if any("packed" in r["lm"].get(c, {}) for r in results.values())]
    tasks = list(dict.fromkeys(t for r in results.values() for t in r.get("zero_shot", {}).get("tasks", {})))
    with_compute = any(r.get("compute") for r in results.values())
    compute_keys = ("training", "teacher", "total") if _with_teacher(results) else ("training", "total")
    grouped = groups(results)
    several = any(len(names) > 1 for names in grouped.values())
    headers = ["model", "role", "trained on"]
    headers += [h for c in corpora for h in (f"{c} loss", f"{c} ppl", f"{c} bpb")]
    headers += [f"{c} packed loss" for c in packed]
    headers += [f"{t} ({_metric(results, t)})" for t in tasks] + (["average"] if tasks else [])
    headers += [COMPUTE_HEADERS[key] for key in compute_keys] if with_compute else []
    headers += ["seeds"] if several else []
    rows = []
    for group, names in grouped.items():
        rs = [results[n] for n in names]
        row = [group, rs[0]["role"], rs[0].get("trained_on") or ""]
        for c in corpora:
            row += [
                _cell(rs, _lm(c, "loss"), ".4f"),
                _cell(rs, _lm(c, "perplexity"), ".2f"),
                _cell(rs, _lm(c, "bits_per_byte"), ".4f"),
            ]
        row += [_cell(rs, _lm(c, "loss", packed=True), ".4f") for c in packed]
        row += [_cell(rs, _task(t), ".1f", 100) for t in tasks]
        if tasks:
            row.append(_cell(rs, lambda r: r.get("zero_shot", {}).get("average"), ".1f", 100))
        if with_compute:  # a unigram is counted, not computed: no model FLOPs
            row += (
                ["-"] * len(compute_keys)
                if rs[0]["role"] == "unigram"
                else [_cell(rs, _compute(key), ".2e", with_spread=False) for key in compute_keys]
            )
        if several:
            row.append(str(len(names)))
        rows.append(row)
    return headers, rows


def _with_teacher(results: dict[str, dict]) -> bool:
    """Whether a student's training ran a teacher in the loop (online KD)."""
    return any((r.get("compute") or {}).get("teacher") for r in results.values())


def notes(results: dict[str, dict]) -> list[str]:
    """What the unigram rows and the compute columns are, in words."""
    out = []
    if any(r["role"] == "unigram" for r in results.values()):
        out.append(UNIGRAM_NOTE)
    if any(r.get("compute") for r in results.values()):
        out.append(FLOPS_NOTE)
    return out


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


def write(rd: RunDir, results: dict[str, dict]) -> None:
    out = rd.eval
    atomic_write_json(rd.eval_results, results)
    atomic_write_text(out / "comparison.md", markdown(results) + "".join(f"\n{note}\n" for note in notes(results)))
    against_compute(results, groups(results), out / "comparison.png")


def summary(results: dict[str, dict]) -> dict[str, Any]:
    """Per model, the headline numbers (the manifest's counts)."""
    return {
        name: {
            "lm_loss": {c: v["loss"] for c, v in r["lm"].items()},
            "packed_loss": {c: v["packed"]["loss"] for c, v in r["lm"].items() if "packed" in v},
            "zero_shot_average": r.get("zero_shot", {}).get("average"),
            "compute": (r.get("compute") or {}).get("total"),
        }
        for name, r in results.items()
    }


def _curves(job: JobConfig, rd: RunDir, path: Path) -> bool:
    """Held-out loss against step for every student with one in its metrics; False when none has."""
    from miniplm.replicas import trained_students

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for student in trained_students(job):
        try:
            lines = rd.metrics(student.name).read_text().splitlines()
        except FileNotFoundError:
            continue
        points = sorted(
            {m["step"]: m["heldout_loss"] for m in map(json.loads, lines) if m.get("heldout_loss") is not None}.items()
        )
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=f"{student.name} ({student.tokens})")
            drawn = True
    ax.set(xlabel="training step", ylabel="held-out loss per token")
    if drawn:
        ax.legend(fontsize=8)
        save_png(fig, path)
    else:
        plt.close(fig)
    return drawn


def report(job: JobConfig, rd: RunDir) -> Path:
    """Hand the report the students' section, and assemble the page; its path."""
    write_section(rd, 20, "students", "\n".join(report_section(job, rd, rd.report)))
    return assemble(rd)


def report_section(job: JobConfig, rd: RunDir, out: Path) -> list[str]:
    """HTML for the report: students' held-out loss curves, the evaluation table and the results
    against compute, when they exist."""
    out.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    if _curves(job, rd, out / "students.png"):
        parts.append(
            figure_html(out / "students.png", "Students' held-out loss during training", alt="held-out loss curves")
        )
    try:
        results = json.loads(rd.eval_results.read_text())
    except FileNotFoundError:
        results = None
    if results:
        headers, rows = table(results)
        parts.append(html_table(headers, [[html.escape(c) for c in row] for row in rows], "comparison"))
        corpus = headline(results)
        against_compute(results, groups(results), out / "compute.png")
        parts.append(
            figure_html(
                out / "compute.png",
                f"Held-out loss ({corpus}) and zero-shot accuracy of each "
                "student, top: against training FLOPs (the paper's axis), bottom: against total "
                "FLOPs",
                alt="results against compute",
            )
        )
        parts.append(
            "<p>Loss in nats per token and perplexity (lower is better; comparable between models "
            "with the same tokenizer and context length), bits per byte of text (comparable across "
            "tokenizers); the packed loss reads the text as the paper does, joined and cut into "
            "instances of max_length + 1 tokens. Accuracies in % (acc_norm where the task has it, else "
            "acc). With several seeds a cell is the mean ± the standard deviation over them.</p>"
        )
        parts += [f"<p>{html.escape(note)}</p>" for note in notes(results)]
        parts.append(
            "<p>In the figure, models without recorded compute and the unigram floors are dashed "
            f"horizontal lines. {html.escape(RULE)} Full results: eval/results.json.</p>"
        )
    return (["<h2>Students</h2>", *parts]) if parts else []

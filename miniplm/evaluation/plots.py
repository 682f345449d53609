"""The comparison's figure: each student's held-out loss and zero-shot accuracy against the compute
that produced it, twice. Top row: against its training FLOPs (its own forward and backward passes,
with an online KD teacher's forward passes), the axis the paper's compute saving is on (MiniPLM's
offline scoring is not charged there). Bottom row: against its total FLOPs (training plus its share
of the scoring, generation, pruning and stored log-probs its data and weights needed; see
miniplm/compute.py). A student trained with several seeds is its replicas' mean with the standard
deviation as an error bar; a model without recorded compute (the teacher, a checkpoint from
elsewhere) and each unigram floor are dashed horizontal lines. Each row has one x-axis title."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from miniplm.report.figures import save_png  # also puts matplotlib in Agg mode


def headline(results: dict[str, dict]) -> str:
    """The corpus the figure shows: the first evaluation corpus the job adds, else the held-out split."""
    corpora = list(dict.fromkeys(c for r in results.values() for c in r["lm"]))
    others = [c for c in corpora if c != "heldout"]
    return (others or corpora or [""])[0]


def _loss(r: dict, corpus: str) -> float | None:
    lm = r["lm"].get(corpus)
    if lm is None:
        return None
    return lm["packed"]["loss"] if "packed" in lm else lm["loss"]


def _accuracy(r: dict) -> float | None:
    average = r.get("zero_shot", {}).get("average")
    return None if average is None else 100 * average


def spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# Per compute axis (a key of a student's `compute`): the row's title and its shared x-axis title.
AXES = {
    "training": (
        "against training FLOPs (the paper's axis)",
        "training FLOPs: the student's forward and backward passes,\n"
        "with an online KD teacher's forward passes (offline scoring not charged)",
    ),
    "total": (
        "against total FLOPs",
        "total FLOPs: training plus the student's share of the scoring,\n"
        "generation, pruning and stored teacher log-probs it needed",
    ),
}


def against_compute(results: dict[str, dict], groups: dict[str, list[str]], path: Path) -> None:
    corpus = headline(results)
    packed = any("packed" in r["lm"].get(corpus, {}) for r in results.values())
    panels = [
        (f"{corpus} {'packed ' if packed else ''}loss per token\n(nats, lower is better)", lambda r: _loss(r, corpus))
    ]
    if any(_accuracy(r) is not None for r in results.values()):
        panels.append(("zero-shot average accuracy (%)", _accuracy))
    fig = plt.figure(figsize=(6 * len(panels) + 3.5, 9.5), layout="constrained")
    for row, (key, (title, x_title)) in zip(fig.subfigures(len(AXES), 1), AXES.items()):
        for ax, (label, value) in zip(row.subplots(1, len(panels), squeeze=False)[0], panels):
            _panel(ax, results, groups, key, value)
            ax.set_ylabel(label)
        row.suptitle(title)
        row.supxlabel(x_title, fontsize=9)  # one per row: side by side, each panel's own would run into the next
    # one legend beside the figure: inside a panel it hid the points under it
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    save_png(fig, path)


def spaced(values: list[float], min_ratio: float) -> list[float]:
    """The sorted values, leaving out each one within `min_ratio` of the last kept: on a log axis, ticks
    whose labels would overlap (the table has every value)."""
    kept: list[float] = []
    for v in sorted(set(values)):
        if not kept or v >= kept[-1] * min_ratio:
            kept.append(v)
    return kept


def _panel(
    ax, results: dict[str, dict], groups: dict[str, list[str]], key: str, value: Callable[[dict], float | None]
) -> None:
    """One panel: each group's value against its `key` FLOPs; lines for what has no such compute."""
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ticks: list[float] = []
    for k, (group, names) in enumerate(groups.items()):
        rs = [results[n] for n in names]
        ys = [value(r) for r in rs]
        if any(y is None for y in ys):
            continue
        y, dy = spread([float(v) for v in ys])
        color = colors[k % len(colors)]
        if rs[0]["role"] == "unigram":  # a floor, not a model: no compute to put it at
            ax.axhline(y, linestyle="--", linewidth=1, color=color, label=group)
            continue
        tag = f"{group} ({rs[0].get('trained_on')})" if rs[0].get("trained_on") else group
        xs = [(r.get("compute") or {}).get(key) for r in rs]
        if all(x is not None for x in xs):
            x, _ = spread([float(v) for v in xs])
            ax.errorbar(
                [x],
                [y],
                yerr=[dy or 0.0],
                fmt="o",
                capsize=4,
                color=color,
                label=f"{tag}, {len(rs)} seeds" if len(rs) > 1 else tag,
            )
            ticks.append(x)
        else:
            ax.axhline(y, linestyle="--", linewidth=1, color=color, label=f"{tag} (compute not recorded)")
    if ticks:  # a tick at each model's compute, in plain text (the report's figures do not parse TeX)
        ax.set_xscale("log")
        low, high = min(ticks) / 1.5, max(ticks) * 1.5
        ax.set_xlim(low, high)
        # a label takes about a sixth of the panel's width: keep ticks at least that far apart
        shown = spaced(ticks, (high / low) ** (1 / 6))
        ax.set_xticks(shown, [f"{t:.2e}" for t in shown], rotation=20)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))

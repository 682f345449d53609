"""The comparison's figure: each model's held-out loss and zero-shot accuracy against the compute that
produced it (students: training plus their share of the work their data and weights needed; see
miniplm/compute.py). A student trained with several seeds is its replicas' mean with the standard
deviation as an error bar; a model without recorded compute (the teacher, a checkpoint from
elsewhere) is a dashed horizontal line."""

from __future__ import annotations

import math
from pathlib import Path

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


def against_compute(results: dict[str, dict], groups: dict[str, list[str]], path: Path) -> None:
    corpus = headline(results)
    packed = any("packed" in r["lm"].get(corpus, {}) for r in results.values())
    panels = [("loss", f"{corpus} {'packed ' if packed else ''}loss per token (nats, lower is better)",
               lambda r: _loss(r, corpus))]
    if any(_accuracy(r) is not None for r in results.values()):
        panels.append(("accuracy", "zero-shot average accuracy (%)", _accuracy))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (_, label, value) in zip(axes[0], panels):
        ticks: list[float] = []
        for k, (group, names) in enumerate(groups.items()):
            rs = [results[n] for n in names]
            ys = [value(r) for r in rs]
            xs = [(r.get("compute") or {}).get("total") for r in rs]
            if any(y is None for y in ys):
                continue
            y, dy = spread([float(v) for v in ys])
            color = colors[k % len(colors)]
            tag = f"{group} ({rs[0].get('trained_on')})" if rs[0].get("trained_on") else group
            if all(x is not None for x in xs):
                x, _ = spread([float(v) for v in xs])
                ax.errorbar([x], [y], yerr=[dy or 0.0], fmt="o", capsize=4, color=color,
                            label=f"{tag}, {len(rs)} seeds" if len(rs) > 1 else tag)
                ticks.append(x)
            else:
                ax.axhline(y, linestyle="--", linewidth=1, color=color, label=f"{tag} (compute not recorded)")
        if ticks:  # a tick at each model's compute, in plain text (the report's figures do not parse TeX)
            ax.set_xscale("log")
            ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
            ax.set_xticks(sorted(set(ticks)), [f"{t:.2e}" for t in sorted(set(ticks))], rotation=20)
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set(xlabel="compute (FLOPs): training + share of the work its data and weights needed", ylabel=label)
        ax.legend(fontsize=7)
    save_png(fig, path)

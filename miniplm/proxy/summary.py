"""What the proxy stage reports: how many units each source of scores covers, how far the proxy
agrees with the LMs on held-out units, and what it cost against scoring every unit."""

from __future__ import annotations

import html
import json

import polars as pl

from miniplm.compute import record, spent
from miniplm.proxy.agreement import held_out_budget, kept_overlap, rank_agreement
from miniplm.proxy.files import cpu_seconds, fit_record, holdout, scores_shard, shard_stats
from miniplm.rundir import RunDir, shard_name
from miniplm.schema.job import JobConfig
from miniplm.schema.select import SelectConfig
from miniplm.scoring.score import lm_flops
from miniplm.stage import StageRun

REPORT_ORDER = 15  # after the selection's counts, before the students' comparison


def summarize(run: StageRun) -> dict:
    """The proxy stage's counts: units by source of score, agreement, FLOPs (the manifest's `flops`:
    fitting and prediction, and in `beside` the LM scores of the sample)."""
    job, rd = run.job, run.rd
    files = [scores_shard(rd, i) for i in range(len(rd.doc_shards("main")))]  # a fit found scored units
    length = ["n_tokens", "doc_tokens"] if job.score.unit == "document" else ["n_tokens"]
    frame = pl.concat([pl.read_parquet(p, columns=[*length, "score_source"]) for p in files])
    fit = json.loads(fit_record(rd).read_text())
    stats = [shard_stats(p) for p in files]
    n_tokens = frame["n_tokens"].to_numpy()
    lm = frame["score_source"] == "lm"
    everything = lm_flops(job, n_tokens)
    flops = {"fit": fit["flops"], "predict": sum(s["flops"] for s in stats)}
    labels = spent(rd, "score") or 0.0
    if job.proxy_use == "beside":  # the LMs scored everything: the proxy's labels are the sample's share
        sample = lm_flops(job, n_tokens[lm.to_numpy()])
        flops |= {f"labels_{name}": value for name, value in sample.items()}
        labels = sum(sample.values())
    held = pl.read_parquet(holdout(rd))
    budget_tokens = int(frame[length[-1]].sum())
    held_cfg = held_out_budget(job.select, budget_tokens)
    return {
        "units": len(n_tokens),
        "lm": int(lm.sum()),
        "proxy": int((~lm).sum()),
        "tokens": int(n_tokens.sum()),
        "fit": fit,
        "held_out": held.height,
        **rank_agreement(held),
        **kept_overlap(held, held_cfg, job.seed),
        "held_out_budget": budget_words(held_cfg),
        "labels_flops": labels,
        "scoring_everything_flops": sum(everything.values()),
        "cpu_seconds": {
            "fit": _seconds(rd, "fit"),
            "predict": sum(_seconds(rd, shard_name(i, "")) for i in range(len(files))),
        },
        "flops": record(**flops),
    }


def _seconds(rd: RunDir, key: str) -> float:
    path = cpu_seconds(rd, key)
    return json.loads(path.read_text())["seconds"] if path.exists() else 0.0


def budget_words(cfg: SelectConfig) -> str:
    """The selection's budget as the held-out units get it: a share of their units or tokens."""
    if cfg.keep_token_fraction is not None:
        return f"{cfg.keep_token_fraction:.1%} of the tokens"
    return f"{cfg.keep_fraction:.1%} of the units"


def overlap_words(result: dict) -> str:
    """The kept-set overlap in words, or why there is none to measure."""
    if not result["kept_lm"]:
        return (
            f"on them the job's budget ({result.get('held_out_budget', 'its share')}) keeps no unit from LM scores, "
            "so the kept sets cannot be compared (a larger sample can)"
        )
    return (
        f"the job's selection from proxy scores keeps {result['kept_overlap']:.1%} of what it keeps from LM scores "
        f"({result['kept_lm']:,} units)"
    )


def spent_share(result: dict) -> tuple[float, float]:
    """(FLOPs the proxy's scores cost in all: labels, fit, prediction; that over scoring everything)."""
    total = result["labels_flops"] + result["flops"]["by"]["fit"] + result["flops"]["by"]["predict"]
    return total, total / result["scoring_everything_flops"] if result["scoring_everything_flops"] else float("nan")


def describe(job: JobConfig, result: dict) -> list[str]:
    total, share = spent_share(result)
    by, everything = result["flops"]["by"], result["scoring_everything_flops"]
    labelled = result["lm"] / max(result["units"], 1)
    return [
        f"proxy: {result['units']:,} units: {result['lm']:,} scored by the teacher and the reference "
        f"({labelled:.1%}), {result['proxy']:,} by the proxy, in {job.run_dir}/proxy/scores",
        f"proxy: on {result['held_out']:,} held-out sample units, Spearman with the LM scores "
        f"{result['spearman_difference']:.3f} (difference per token), {result['spearman_teacher']:.3f} "
        f"(teacher log-prob per token); {overlap_words(result)}",
        f"proxy: {total:.3g} FLOPs (LM scores of the sample {result['labels_flops']:.3g}, fit {by['fit']:.3g}, "
        f"prediction {by['predict']:.3g}), {share:.1%} of scoring every unit ({everything:.3g}); "
        f"CPU {result['cpu_seconds']['fit']:.1f} s fitting, {result['cpu_seconds']['predict']:.1f} s predicting",
    ]


def write_report(rd: RunDir, result: dict) -> None:
    """The proxy's section of the report."""
    from miniplm.report.page import assemble, write_section

    total, share = spent_share(result)
    everything = result["scoring_everything_flops"]
    rows = [
        ("units scored by the teacher and the reference", f"{result['lm']:,} of {result['units']:,}"),
        ("units scored by the proxy", f"{result['proxy']:,}"),
        ("held-out sample units (never fitted on)", f"{result['held_out']:,}"),
        ("Spearman, difference per token", f"{result['spearman_difference']:.3f}"),
        ("Spearman, teacher log-prob per token", f"{result['spearman_teacher']:.3f}"),
        (
            "kept by the job's selection from LM scores, also kept from proxy scores",
            f"{result['kept_overlap']:.1%} of {result['kept_lm']:,}" if result["kept_lm"] else overlap_words(result),
        ),
        ("FLOPs: LM scores of the sample", f"{result['labels_flops']:.3g}"),
        ("FLOPs: fit and prediction", f"{result['flops']['by']['fit'] + result['flops']['by']['predict']:.3g}"),
        ("FLOPs in all, against scoring every unit", f"{total:.3g} ({share:.1%} of {everything:.3g})"),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    write_section(rd, REPORT_ORDER, "proxy", f"<h2>Proxy scores</h2><table>{body}</table>")
    assemble(rd)

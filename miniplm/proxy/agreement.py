"""How far the proxy's scores agree with the LMs' on units the proxy never saw labelled.

Two numbers, both on the sample's held-out units: the Spearman rank correlation of each score
(the difference per token the selection ranks by, and the teacher's log-prob per token the noise
floor reads), and the overlap of the kept sets: the job's own selection (strategy, noise floor,
caps, budget as a share of the corpus) run once on the LM scores and once on the proxy's, and the
share of what the LM selection kept that the proxy's kept too.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from miniplm.schema.select import SelectConfig

LM_COLUMNS = ("teacher_logprob", "reference_logprob")
PROXY_COLUMNS = ("proxy_teacher_logprob", "proxy_reference_logprob")


def per_token(frame: pl.DataFrame, teacher: str, reference: str) -> tuple[np.ndarray, np.ndarray]:
    """(difference, teacher log-prob) per predicted token."""
    n = np.maximum(frame["n_tokens"].to_numpy(), 1)
    t, r = frame[teacher].to_numpy(), frame[reference].to_numpy()
    return (t - r) / n, t / n


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho; NaN where either side has no ranking (fewer than two units, or all equal)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def rank_agreement(frame: pl.DataFrame) -> dict[str, float]:
    """Spearman's rho between LM and proxy, for the difference and the teacher log-prob per token."""
    lm_d, lm_t = per_token(frame, *LM_COLUMNS)
    px_d, px_t = per_token(frame, *PROXY_COLUMNS)
    return {"spearman_difference": spearman(lm_d, px_d), "spearman_teacher": spearman(lm_t, px_t)}


def held_out_budget(cfg: SelectConfig, corpus_tokens: int) -> SelectConfig:
    """The selection's settings with its budget as a share: a token count is the whole corpus's, and
    on a subset it keeps that share of the subset's tokens."""
    if cfg.keep_tokens is None:
        return cfg
    share = min(cfg.keep_tokens / max(corpus_tokens, 1), 1.0)
    return cfg.model_copy(update={"keep_tokens": None, "keep_fraction": None, "keep_token_fraction": share})


def kept_overlap(frame: pl.DataFrame, cfg: SelectConfig, seed: int) -> dict[str, float | int]:
    """The job's selection on these units from LM scores and from proxy scores: how many each kept,
    and the share of the LM's kept units the proxy's kept too."""
    from miniplm.selection.strategies import decide

    def kept(teacher: str, reference: str) -> set[str]:
        scores = frame.with_columns(teacher_logprob=pl.col(teacher), reference_logprob=pl.col(reference))
        decided = decide(scores, cfg, seed)
        return set(decided.filter(pl.col("kept"))["id"].to_list())

    lm, proxy = kept(*LM_COLUMNS), kept(*PROXY_COLUMNS)
    return {
        "kept_lm": len(lm),
        "kept_proxy": len(proxy),
        "kept_overlap": len(lm & proxy) / len(lm) if lm else float("nan"),
    }

"""What a teacher_logits set keeps of the teacher's next-token distribution at each position.

- top_k: the k most likely tokens, their log-probs, and the log of the mass left to the others.
  Training compares both models on these k + 1 outcomes: for every divergence miniplm offers a
  lower bound of the full loss (merging outcomes only lowers an f-divergence), biased.
- top_p: the fewest most likely tokens whose mass reaches p, at most k, then as top_k (Peng et
  al.'s truncation): fewer bytes where the teacher is sure, the same bias where it is not.
- sampled: k tokens drawn from the teacher's distribution (with replacement) and their log-probs.
  The mean over the draws of log P(x) - log Q(x) is an unbiased estimate of KL(P || Q), and the
  mean of its gradient (the student's distribution less the draws' frequencies) an unbiased
  estimate of the full gradient (random-sampling KD; Gemma 3 trains on 256 draws). Forward KL
  only: the other divergences weigh outcomes by the student's probabilities, which the teacher's
  draws can reach only through importance weights Q(x) / P(x), unbiased too but of a variance
  that grows where the student puts mass the teacher does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Kept:
    """Per position: token ids and log-probs [positions, k] (top_p: past `counts`, a kept id again
    and -inf), the log
    of the remaining mass [positions] (None for sampled), the number kept (top_p, else None)."""

    ids: torch.Tensor
    logp: torch.Tensor
    rest: torch.Tensor | None
    counts: torch.Tensor | None


def keep(logp: torch.Tensor, mode: str, k: int, p: float | None = None, generator=None) -> Kept:
    """What `mode` keeps of log-probabilities [positions, vocab] (already at the set's temperature)."""
    if mode == "sampled":
        ids = torch.multinomial(logp.exp(), k, replacement=True, generator=generator).sort(dim=1).values
        return Kept(ids, logp.gather(1, ids), None, None)
    values, ids = torch.topk(logp, k, dim=-1)
    counts = None
    if mode == "top_p":
        assert p is not None
        before = torch.cumsum(values.exp(), dim=1) - values.exp()  # mass of the tokens before each
        counts = (before < p).sum(dim=1).clamp(min=1)
        values = values.masked_fill(torch.arange(k, device=logp.device) >= counts[:, None], float("-inf"))
        ids = torch.where(torch.isfinite(values), ids, ids[:, :1])  # unused slots repeat a kept id
    rest = torch.logsumexp(logp.scatter(1, ids, float("-inf")), dim=-1)
    return Kept(ids, values, rest, counts)

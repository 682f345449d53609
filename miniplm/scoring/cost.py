"""The FLOPs the score stage spends: each model reads every scored document's windows
(scoring/windows.py), or every instance once, whatever batches they were packed into."""

from __future__ import annotations

import numpy as np

from miniplm.models.flops import ModelFlops
from miniplm.scoring.windows import windows_for


def scoring_flops(n_tokens: np.ndarray, unit: str, max_length: int, stride: int, counted: ModelFlops) -> float:
    """One model's forward FLOPs over units that predicted `n_tokens` tokens each."""
    total = 0.0
    lengths, repeats = np.unique(np.asarray(n_tokens, dtype=np.int64), return_counts=True)
    for n, k in zip(lengths.tolist(), repeats.tolist()):
        if unit == "instance":  # n + 1 tokens: n inputs, each predicting the next
            flops = counted.forward(n) if n > 0 else 0.0
        else:
            flops = sum(counted.forward(w.length, w.scored) for w in windows_for(0, n, max_length, stride))
        total += k * flops
    return total

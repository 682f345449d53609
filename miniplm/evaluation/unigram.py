"""A floor to read a student's loss against: the unigram model of the tokens it trained on.

The unigram probability of a token is its count in the token set, add-one
smoothed over the tokenizer's vocabulary: (count + 1) / (N + V). It knows
which tokens are common and nothing else, so a student whose held-out loss
is not clearly below it has learned no more than token frequencies. It is
scored on exactly the targets the students' held-out loss predicts
(heldout.py `readings`: every token of each document read after BOS, and the
packed instances' tokens but their first), so its loss, perplexity and bits
per byte read like theirs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from miniplm.corpus.instance_rows import PAD
from miniplm.corpus.tokens import TokenRows, row_blocks
from miniplm.evaluation.heldout import Tally, predicted, readings, summary


def token_counts(folder: str | Path, vocab: int) -> np.ndarray:
    """How often each of a vocabulary's `vocab` ids occurs in a token set's rows (PAD, the filler of
    padded instance rows, is no token)."""
    counts = np.zeros(vocab, dtype=np.int64)
    for shard in TokenRows(folder).files:
        for block in row_blocks(shard):  # [rows, width] views into the mapped file: a block at a time
            ids = block.ravel()
            ids = ids[ids != PAD]
            if ids.size and (ids.min() < 0 or ids.max() >= vocab):
                bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
                raise ValueError(
                    f"{shard}: token id {bad} is outside the tokenizer's {vocab} ids; was the token set "
                    "made with another tokenizer?"
                )
            counts += np.bincount(ids, minlength=vocab)
    return counts


def log_probs(counts: np.ndarray) -> np.ndarray:
    """The add-one smoothed unigram's natural-log probability of every id."""
    return np.log(counts + 1.0) - np.log(float(counts.sum()) + len(counts))


def unigram_loss(
    logp: np.ndarray,
    tokenizer,
    texts: list[str],
    *,
    max_length: int,
    stride: int = 0,
    packed: bool = True,
    desc: str = "unigram",
    show_progress: bool = True,
) -> dict:
    """As heldout.lm_loss, for the unigram `logp` (no model FLOPs)."""
    documents, instances = Tally(), Tally()
    for r in readings(
        tokenizer, texts, max_length=max_length, stride=stride, packed=packed, desc=desc, show_progress=show_progress
    ):
        for tally, sequences, windows in (
            (documents, r.documents, r.windows),
            (instances, r.instances, r.instance_windows),
        ):
            targets = predicted(sequences, windows)
            tally.logprob += float(logp[targets].sum())
            tally.tokens += len(targets)
            tally.units += len({w.doc for w in windows})
    return summary(texts, documents, instances if packed else None)

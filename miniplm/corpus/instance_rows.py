"""Selected instances as training rows.

With the tokenizer that scored them, each instance is one row as it is (no
re-tokenizing): its max_length + 1 tokens, or fewer where it was cut at a
boundary, right-padded with PAD; the trainer predicts no PAD target and reads
PAD inputs as token 0 (right padding under causal attention changes no real
position). With another tokenizer, the instance's text is split back into its
document pieces, each tokenized and followed by EOS where its document ends,
and packed like documents.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from miniplm.models.text_tokens import token_ids
from miniplm.scoring.instances import piece_texts

PAD = -1  # a token id no vocabulary has


def padded_rows(instances: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, int]:
    """The instances as rows of `width` tokens, right-padded with PAD; and the PAD count."""
    rows = np.full((len(instances), width), PAD, dtype=np.int64)
    for i, tokens in enumerate(instances):
        if len(tokens) > width:
            raise ValueError(f"an instance of {len(tokens)} tokens does not fit a row of {width}")
        rows[i, : len(tokens)] = tokens
    return rows, int((rows == PAD).sum())


def piece_token_lists(
    texts: Sequence[str], docs: Sequence[Sequence[dict[str, Any]]], tokenizer, eos: int
) -> list[list[int]]:
    """Each instance's document pieces tokenized by another tokenizer, EOS after each piece that
    ends its document: the pieces, in order, as the token lists to join."""
    pieces, ends = [], []
    for text, held in zip(texts, docs):
        pieces += piece_texts(text, held)
        ends += [p["ends_doc"] for p in held]
    encoded = token_ids(tokenizer, pieces)
    return [tokens + [eos] if end else list(tokens) for tokens, end in zip(encoded, ends)]

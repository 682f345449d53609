"""Cutting token sequences into model inputs, and packing those into batches.

A document of L tokens is scored as the sequence [BOS, t1, ..., tL]: the
model reads positions 0..L-1 and predicts t1..tL, so every token of the
document is predicted. When L exceeds `max_length`, the sequence is cut into
windows of at most `max_length` inputs; each window after the first starts
`stride` tokens early, so those tokens are context only, and each target is
scored exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from miniplm.errors import ConfigError


def prefix_token(tokenizer, model: str = "") -> int:
    """The token every document is read after: the tokenizer's BOS, or EOS where it has none, so
    that the document's first token is predicted too."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        named = f"{model!r}: " if model else ""
        raise ConfigError(f"{named}its tokenizer has neither a BOS nor an EOS token to start documents with")
    return token


@dataclass(frozen=True)
class Window:
    doc: int  # index of the document (or instance) in the shard
    start: int  # first input position in the [BOS] + tokens sequence
    end: int  # one past the last input position
    skip: int  # leading inputs whose predictions were scored by the previous window

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def scored(self) -> int:
        return self.length - self.skip


def windows_for(doc: int, n_tokens: int, max_length: int, stride: int) -> list[Window]:
    """The windows that predict each of a document's `n_tokens` tokens exactly once."""
    if n_tokens == 0:
        return []
    out = [Window(doc, 0, min(max_length, n_tokens), 0)]
    while out[-1].end < n_tokens:
        start = out[-1].end - stride
        out.append(Window(doc, start, min(start + max_length, n_tokens), stride))
    return out


def plan_batches(windows: Sequence[Window], batch_tokens: int) -> list[list[Window]]:
    """Group windows into batches of at most `batch_tokens` padded tokens.

    Longest first, so each batch holds windows of similar length and little
    padding. The plan depends only on the windows, never on timing: a resumed
    shard sees exactly the batches an uninterrupted run would, which keeps
    results bitwise equal.
    """
    order = sorted(windows, key=lambda w: (-w.length, w.doc, w.start))
    batches: list[list[Window]] = []
    current: list[Window] = []
    for w in order:
        # sorted longest first, so the batch's padded width is its first window's length
        if current and (len(current) + 1) * current[0].length > batch_tokens:
            batches.append(current)
            current = []
        current.append(w)
    if current:
        batches.append(current)
    return batches


def instance_window(doc: int, n_tokens: int) -> Window:
    """The one window of a packed instance (miniplm/scoring/instances.py): its first token is
    context, every other one is predicted. (Inputs start at position 1 of [prefix] + tokens, so
    the prefix is never read.)"""
    return Window(doc, 1, n_tokens, 0)

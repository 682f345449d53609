"""The paper's unit: packed instances, cut where the official MiniPLM code cuts them.

The official pipeline (thu-coai/MiniPLM, tools/process_data/tokenize_pile.py)
packs the Pile per source (Pile domain): each document is tokenized without
special tokens and followed by EOS, and the stream fills a buffer. Whenever
the buffer holds `max_length + 1` tokens, that chunk is cut back to its last
boundary and the rest is carried into the next chunk. A boundary is the end
of a token that is

- the EOS token, or holds a newline;
- a sentence end: it holds `.`, `!`, `?` or `;` (and no opening bracket left
  open), and whitespace follows the mark, in the token itself or at the start
  of the next token. So "D.A." and "3.14" are not cut, ". The" and ".\n" are.
  Closing quotes and brackets right after the mark go with the sentence.

A chunk with no boundary past its first token is kept whole. Differences from
the official code, so that nothing is dropped: the stream is cut per source
within each document shard (shards are scored independently), and what is
left in the buffer at the end of a source becomes its last, shorter instance
(the official code drops it). No BOS: an instance of n tokens is read as
tokens[:-1] predicting tokens[1:], so it is scored on n - 1 tokens, exactly
as a student trains on it (the instance is a training row of max_length + 1
tokens); the score is the mean per-token log-prob difference over those.

Every instance carries its provenance: the pieces of documents it holds, as
(document id, first token, end token, offset in the instance, first char, end
char, whether the piece ends with its document's EOS). Token positions count
the document's EOS as its token len(doc); the char range is that piece's text
in the document, so the instance's text (its pieces joined by a blank line) can
be rebuilt from the document shard and tokenized again with another tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from miniplm.errors import ConfigError
from miniplm.models.text_tokens import encode_texts

SENTENCE_END = ".!?;"
OPENING = {"(": ")", "[": "]", "{": "}", "<": ">"}
CLOSING_AFTER_END = "\"')]}>’”»"
PIECE_SEPARATOR = "\n\n"  # between the pieces of an instance's text: they come from different documents


@dataclass(frozen=True)
class Boundaries:
    """Per vocabulary entry: whether a cut may follow it always, or only when whitespace comes next;
    and whether its text starts with whitespace."""

    always: np.ndarray  # bool [vocab]
    if_space_follows: np.ndarray  # bool [vocab]
    starts_with_space: np.ndarray  # bool [vocab]

    @classmethod
    def from_texts(cls, texts: Sequence[str], eos: int) -> "Boundaries":
        """From each token id's decoded text (index = id)."""
        n = len(texts)
        always = np.zeros(n, dtype=bool)
        if_space = np.zeros(n, dtype=bool)
        starts = np.zeros(n, dtype=bool)
        for i, text in enumerate(texts):
            starts[i] = text[:1].isspace()
            if "\n" in text:
                always[i] = True
                continue
            last = max(text.rfind(c) for c in SENTENCE_END)
            if last < 0 or any(o in text and c not in text for o, c in OPENING.items()):
                continue
            rest = text[last + 1 :].lstrip(CLOSING_AFTER_END)
            if rest[:1].isspace():
                always[i] = True
            elif not rest:
                if_space[i] = True
        if 0 <= eos < n:
            always[eos] = True
        return cls(always, if_space, starts)

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "Boundaries":
        if tokenizer.eos_token_id is None:
            raise ConfigError("packed instances join documents with EOS, and the tokenizer has none")
        size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
        texts = tokenizer.batch_decode(
            [[i] for i in range(size)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return cls.from_texts(texts, tokenizer.eos_token_id)

    def mask(self, stream: np.ndarray) -> np.ndarray:
        """Whether a cut may follow each position of the stream (the stream's end always may)."""
        following = np.ones(len(stream), dtype=bool)
        following[:-1] = self.starts_with_space[stream[1:]]
        return self.always[stream] | (self.if_space_follows[stream] & following)


def cut_points(boundary: np.ndarray, width: int) -> list[int]:
    """Where a stream with these boundary flags is cut into chunks of at most `width` tokens: the
    end of every chunk, the last one included."""
    n = len(boundary)
    positions = np.arange(n)
    last_boundary = np.maximum.accumulate(np.where(boundary, positions, -1)) if n else positions
    ends, start = [], 0
    while n - start >= width:
        cut = int(last_boundary[start + width - 1])
        end = cut + 1 if cut >= start + 1 else start + width  # at least two tokens, else the whole chunk
        ends.append(end)
        start = end
    if start < n:
        ends.append(n)
    return ends


def char_boundaries(offsets: Sequence[tuple[int, int]], n_chars: int) -> np.ndarray:
    """For token positions 0..len (len: the document's end, and its EOS), the char where the
    text before that position ends: the positions partition the text exactly."""
    n = len(offsets)
    out = np.empty(n + 2, dtype=np.int64)
    out[0] = 0
    out[1:n] = [start for start, _ in offsets[1:]]
    out[n] = out[n + 1] = n_chars
    return np.maximum.accumulate(np.minimum(out, n_chars))


@dataclass
class Packed:
    """The instances of one source's documents."""

    tokens: list[np.ndarray]
    pieces: list[list[dict[str, Any]]]


def pack_source(
    docs: Sequence[Sequence[int]],
    ids: Sequence[str],
    chars: Sequence[np.ndarray] | None,
    eos: int,
    max_length: int,
    boundaries: Boundaries,
) -> Packed:
    """One source's documents (token lists, without EOS) as instances of at most max_length + 1
    tokens, cut at boundaries, with the pieces each holds (their char ranges when `chars` gives
    each document's `char_boundaries`)."""
    lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)
    if not len(docs):
        return Packed([], [])
    stream = np.concatenate([np.append(np.asarray(d, dtype=np.int64), eos) for d in docs])
    doc_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tokens, pieces, start = [], [], 0
    for end in cut_points(boundaries.mask(stream), max_length + 1):
        tokens.append(stream[start:end])
        first = int(np.searchsorted(doc_start, start, side="right")) - 1
        held = []
        for d in range(first, len(docs)):
            if doc_start[d] >= end:
                break
            s, e = max(start, doc_start[d]) - doc_start[d], min(end, doc_start[d] + lengths[d]) - doc_start[d]
            piece = {"id": ids[d], "start": int(s), "end": int(e), "offset": int(doc_start[d] + s - start)}
            if chars is not None:
                piece.update(char_start=int(chars[d][s]), char_end=int(chars[d][e]))
            held.append({**piece, "ends_doc": bool(e == lengths[d])})
        pieces.append(held)
        start = end
    return Packed(tokens, pieces)


def pack_documents(
    texts: Sequence[str], ids: Sequence[str], sources: Sequence[str], tokenizer, max_length: int, boundaries: Boundaries
) -> dict[str, list]:
    """A shard's documents as instances, source by source (sources in sorted order, documents in
    shard order within a source): columns source, input_ids, docs (the pieces)."""
    if not tokenizer.is_fast:
        raise ConfigError("packed instances need a fast tokenizer (for the char offsets of each piece)")
    encoded = encode_texts(tokenizer, texts, return_offsets_mapping=True)
    out: dict[str, list] = {"source": [], "input_ids": [], "docs": []}
    by_source: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        by_source.setdefault(source, []).append(i)
    for source in sorted(by_source):
        members = by_source[source]
        packed = pack_source(
            [encoded["input_ids"][i] for i in members],
            [ids[i] for i in members],
            [char_boundaries(encoded["offset_mapping"][i], len(texts[i])) for i in members],
            tokenizer.eos_token_id,
            max_length,
            boundaries,
        )
        out["source"] += [source] * len(packed.tokens)
        out["input_ids"] += packed.tokens
        out["docs"] += packed.pieces
    return out


def instance_text(pieces: Sequence[dict[str, Any]], doc_texts: dict[str, str]) -> str:
    """An instance's text: each piece's text from its document, joined by a blank line."""
    return PIECE_SEPARATOR.join(doc_texts[p["id"]][p["char_start"] : p["char_end"]] for p in pieces)


def piece_texts(text: str, pieces: Sequence[dict[str, Any]]) -> list[str]:
    """The pieces of an instance's text (`instance_text`), split again by their char lengths."""
    out, at = [], 0
    for p in pieces:
        n = p["char_end"] - p["char_start"]
        out.append(text[at : at + n])
        at += n + len(PIECE_SEPARATOR)
    return out

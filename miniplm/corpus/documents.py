"""What makes a raw record a document: its checks, its id, its dedup key and its split.

All of it is a pure function of the record, the source path and the seed, so
the same inputs give the same ids and splits on any machine and with any
number of worker processes.
"""

from __future__ import annotations

import hashlib
import unicodedata

from miniplm.corpus.readers import RawDoc

# Reasons that mean the input itself is bad (on_error: fail stops on these);
# "empty" and the duplicate counts are ordinary filtering.
BAD_INPUT_REASONS = frozenset(
    {
        "unreadable_file",
        "truncated_file",
        "malformed_json",
        "invalid_utf8",
        "missing_text",
        "missing_id",
        "not_string",
        "too_long",
        "duplicate_id",
    }
)
# Reasons of the quality and repetition filters (corpus/quality.py): Gopher's rules.
QUALITY_REASONS = (
    "short_document",
    "mean_word_length",
    "symbol_ratio",
    "bullet_lines",
    "ellipsis_lines",
    "non_alpha_words",
    "few_stop_words",
)
REPETITION_REASONS = ("duplicate_paragraphs", "duplicate_lines", "top_ngram", "duplicate_ngrams")


def problem_with(doc: RawDoc, *, needs_id: bool, max_chars: int) -> tuple[str, str] | None:
    """(reason, detail) when the record cannot become a document, else None."""
    if doc.text is None:
        return "missing_text", "no text field"
    if not isinstance(doc.text, str):
        return "not_string", f"text is a {type(doc.text).__name__}"
    if needs_id and (doc.id is None or doc.id == ""):
        return "missing_id", "no id field"
    if len(doc.text) > max_chars:
        return "too_long", f"{len(doc.text)} characters (corpus.max_chars is {max_chars})"
    if not doc.text.strip():
        return "empty", "empty or whitespace-only text"
    return None


def generated_id(path: str, line: int) -> str:
    """The id of a document whose input gives none: a hash of where it was read from."""
    return hashlib.blake2b(f"{path}\x00{line}".encode(), digest_size=12).hexdigest()


def normalise(text: str) -> str:
    """The text in NFKC form, case-folded, its words separated by single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedup_key(normalised: str) -> bytes:
    """The exact-duplicate key of a normalised text: texts that differ only in Unicode form, case or
    whitespace share it."""
    return hashlib.blake2b(normalised.encode(), digest_size=16).digest()


def assign_split(doc_id: str, seed: int, reference_fraction: float, heldout_fraction: float) -> str:
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < reference_fraction:
        return "reference"
    if u < reference_fraction + heldout_fraction:
        return "heldout"
    return "main"

"""Packed instances as the official MiniPLM code cuts them: at most max_length + 1 tokens, cut back to
the last boundary, the rest carried on; per source; every token of every document (and its EOS) in
exactly one place, with the char range of its text."""

import re

import numpy as np
import pytest

from miniplm.models.loading import load_tokenizer
from miniplm.scoring.instances import Boundaries, cut_points, instance_text, pack_documents, piece_texts

TEXTS = [
    "In the beginning God created the heaven and the earth. And the earth was without form, and void! "
    "Was it dark? It was; and the Spirit moved.\nAnd God said, Let there be light.",
    "Dr. Smith met the D.A. at 3.14 pm. They spoke of pi (3.14159) and e. Then they left.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))  # 3.0 exactly? yes.",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "no sentence end in this one at all just words and words and words and more words here",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return load_tokenizer(tiny_models["teacher"])


def official_cut(tokenizer, stream: list[int], width: int) -> list[list[int]]:
    """The official loop (tokenize_pile.py, Writer.add_tokens), one token at a time: fill a buffer,
    and whenever it holds `width` tokens scan back for the last boundary. Two refinements of miniplm:
    the sentence-end test looks for whitespace right after the mark (the official one for a space
    anywhere in the two tokens), and the source's rest becomes its last instance."""

    def text(t):
        return tokenizer.decode([t], clean_up_tokenization_spaces=False)

    def boundary(i, chunk, rest):
        t = chunk[i]
        if t == tokenizer.eos_token_id or "\n" in text(t):
            return True
        s = text(t)
        marks = [m.start() for m in re.finditer(r"[.!?;]", s)]
        if not marks or any(o in s and c not in s for o, c in ("()", "[]", "{}", "<>")):
            return False
        after = s[marks[-1] + 1 :].lstrip("\"')]}>’”»")
        if after:
            return after[0].isspace()
        following = (chunk[i + 1 :] + rest)[:1]
        return not following or text(following[0])[:1].isspace()

    out, buffer = [], []
    for k, token in enumerate(stream):
        buffer.append(token)
        rest = stream[k + 1 :]
        while len(buffer) >= width:
            chunk, buffer = buffer[:width], buffer[width:]
            for i in range(width - 1, 0, -1):
                if boundary(i, chunk, buffer + rest):
                    buffer = chunk[i + 1 :] + buffer
                    chunk = chunk[: i + 1]
                    break
            out.append(chunk)
    return out + ([buffer] if buffer else [])


@pytest.mark.parametrize("max_length", [6, 11, 24])
def test_cuts_are_the_official_loops(tokenizer, max_length):
    boundaries = Boundaries.for_tokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    docs = tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    stream = [t for d in docs for t in d + [eos]]
    ends = cut_points(boundaries.mask(np.array(stream)), max_length + 1)
    got = [stream[a:b] for a, b in zip([0, *ends[:-1]], ends)]
    assert got == official_cut(tokenizer, stream, max_length + 1)
    assert all(2 <= len(c) <= max_length + 1 for c in got[:-1])


def test_instances_end_at_sentence_ends_never_inside_abbreviations_or_numbers(tokenizer):
    ids = [f"d{i}" for i in range(len(TEXTS))]
    packed = pack_documents(TEXTS, ids, ["s"] * len(TEXTS), tokenizer, 24, Boundaries.for_tokenizer(tokenizer))
    texts = dict(zip(ids, TEXTS))
    end = re.compile(r"(\n|[.!?;][\"')\]]*)[ \t]*$")
    at_an_end = 0
    for tokens, pieces in zip(packed["input_ids"][:-1], packed["docs"][:-1]):
        last = pieces[-1]
        if last["ends_doc"]:
            at_an_end += 1  # cut right after a document's EOS
            continue
        text = texts[last["id"]]
        before, after = text[: last["char_end"]], text[last["char_end"] :]
        assert not (before.endswith("D.") and after.startswith("A")) and not re.search(r"\d\.$", before)
        if end.search(before) and (after[:1].isspace() or before[-1:].isspace()):
            at_an_end += 1
        else:  # no boundary anywhere in the chunk: kept whole, max_length + 1 tokens
            assert len(tokens) == 25
            chunk = instance_text(pieces, texts)
            assert not re.search(r"[.!?;][\"')\]]*\s|\n", chunk[1:-1]), chunk
    assert at_an_end >= 8


def test_every_token_and_char_lands_in_exactly_one_place(tokenizer):
    ids = [f"d{i}" for i in range(len(TEXTS))]
    sources = ["a", "b", "a", "b", "a"]
    packed = pack_documents(TEXTS, ids, sources, tokenizer, 9, Boundaries.for_tokenizer(tokenizer))
    docs = tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    tokens = {i: [] for i in ids}
    chars = {i: [] for i in ids}
    for inst, pieces, source in zip(packed["input_ids"], packed["docs"], packed["source"]):
        assert len(inst) <= 10 and sum(p["end"] - p["start"] for p in pieces) == len(inst)
        assert {sources[ids.index(p["id"])] for p in pieces} == {source}  # never two sources in one instance
        for p in pieces:
            tokens[p["id"]] += inst[p["offset"] : p["offset"] + p["end"] - p["start"]].tolist()
            chars[p["id"]].append((p["char_start"], p["char_end"]))
        text = instance_text(pieces, dict(zip(ids, TEXTS)))
        assert piece_texts(text, pieces) == [TEXTS[ids.index(p["id"])][p["char_start"] : p["char_end"]] for p in pieces]
    for i, d in zip(ids, docs):
        assert tokens[i] == d + [eos]
        spans = chars[i]
        assert spans[0][0] == 0 and spans[-1][1] == len(TEXTS[ids.index(i)])
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # the pieces' texts tile the document
    assert packed["source"] == sorted(packed["source"])  # source by source

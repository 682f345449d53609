"""Held-out language modelling: loss and perplexity per token of a model on a set of documents.

Two readings. Per document: each document is read as [BOS] + tokens (EOS
where the tokenizer has no BOS), exactly as the score stage reads it, so
every token is predicted once; long documents go through windows of
`max_length` tokens. Packed, as the paper measures its LM loss: the
documents joined with EOS and cut into instances of at most max_length + 1
tokens at sentence ends (miniplm/scoring/instances.py), each read with its
first token as context. Either loss is the mean negative log-likelihood over
all predicted tokens. `readings` and `predicted` give those targets to any
model of the text, so the unigram floor (unigram.py) is scored on exactly the
tokens the students are.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from itertools import islice
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from miniplm.corpus.readers import RawDoc, read_input
from miniplm.errors import ConfigError
from miniplm.lookups import expand_input
from miniplm.models.flops import ModelFlops
from miniplm.models.text_tokens import token_ids
from miniplm.rundir import RunDir
from miniplm.schema.corpus import InputSpec
from miniplm.scoring.instances import Boundaries, pack_source
from miniplm.scoring.logprobs import batch_logprobs
from miniplm.scoring.windows import Window, instance_window, plan_batches, prefix_token, windows_for

CHUNK_DOCS = 2048


def heldout_texts(rd: RunDir) -> Iterator[str]:
    for shard in rd.doc_shards("heldout"):
        yield from pq.read_table(shard, columns=["text"])["text"].to_pylist()


def corpus_texts(spec: InputSpec, max_chars: int) -> Iterator[str]:
    """The readable documents of an evaluation corpus; bad records are skipped, as prepare skips them."""
    files = expand_input(spec)
    if not files:
        raise ConfigError(f"eval.corpora: nothing found at {spec.path!r}")
    for _, item in read_input(spec, tuple(files), max_chars):
        if isinstance(item, RawDoc) and isinstance(item.text, str) and item.text.strip():
            yield item.text


def take(texts: Iterator[str], limit: int | None) -> list[str]:
    return list(islice(texts, limit))


class Tally:
    """Summed log-prob and count of predicted tokens, the units read and the FLOPs spent."""

    def __init__(self) -> None:
        self.logprob, self.tokens, self.units, self.flops = 0.0, 0, 0, 0.0

    def add(
        self, model, sequences: list[np.ndarray], windows: list[Window], prefix: int, batch_tokens: int, device: str
    ) -> None:
        counted = ModelFlops.of(model)
        for batch in plan_batches(windows, batch_tokens):
            for lp in batch_logprobs(batch, sequences, {"model": model}, prefix, device)["model"]:
                self.logprob += float(lp.double().sum())
                self.tokens += lp.numel()
        self.units += len({w.doc for w in windows})
        self.flops += sum(counted.forward(w.length, w.scored) for w in windows)

    def loss(self) -> float:
        return -self.logprob / self.tokens if self.tokens else float("nan")


@dataclass(frozen=True)
class Reading:
    """A chunk of texts as the held-out loss reads them: each document's tokens and the windows that
    predict each of them once; with `packed`, the instances and their windows too."""

    documents: list[np.ndarray]
    windows: list[Window]
    instances: list[np.ndarray]
    instance_windows: list[Window]


def readings(
    tokenizer,
    texts: list[str],
    *,
    max_length: int,
    stride: int = 0,
    packed: bool = True,
    desc: str = "held-out",
    show_progress: bool = True,
) -> Iterator[Reading]:
    """`texts` as the held-out loss reads them, a chunk at a time (token lists of a large split would
    not fit in memory)."""
    boundaries = Boundaries.for_tokenizer(tokenizer) if packed else None
    saved, tokenizer.model_max_length = tokenizer.model_max_length, sys.maxsize  # windowed here, not truncated
    bar = tqdm(total=len(texts), desc=desc, unit="doc", disable=not show_progress, dynamic_ncols=True)
    try:
        for start in range(0, len(texts), CHUNK_DOCS):
            chunk = texts[start : start + CHUNK_DOCS]
            encoded = token_ids(tokenizer, chunk)
            sequences = [np.asarray(t, dtype=np.int64) for t in encoded]
            windows = [w for d, seq in enumerate(sequences) for w in windows_for(d, len(seq), max_length, stride)]
            pieces: list[np.ndarray] = []
            if boundaries is not None:  # one stream, as one source; the chunk's tail is its last instance
                pieces = pack_source(
                    encoded, [""] * len(encoded), None, tokenizer.eos_token_id, max_length, boundaries
                ).tokens
            yield Reading(
                sequences, windows, pieces, [instance_window(d, len(p)) for d, p in enumerate(pieces) if len(p) > 1]
            )
            bar.update(len(chunk))
    finally:
        tokenizer.model_max_length = saved
        bar.close()


def predicted(sequences: list[np.ndarray], windows: list[Window]) -> np.ndarray:
    """The tokens the windows predict, in order. A window reads positions [start, end) of
    [prefix] + tokens and predicts the next token at each position after its first `skip`: tokens
    start + skip .. end - 1 of the sequence itself, so the prefix is never a target."""
    if not windows:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([sequences[w.doc][w.start + w.skip : w.end] for w in windows])


def summary(texts: list[str], documents: Tally, instances: Tally | None) -> dict:
    """The result of a held-out reading: loss (mean NLL in nats) and perplexity per predicted token,
    bits per byte of text; with `instances`, the same on packed instances; FLOPs spent."""
    loss = documents.loss()
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    result = {
        "loss": loss,
        "perplexity": math.exp(loss) if documents.tokens else float("nan"),
        "tokens": documents.tokens,
        "documents": len(texts),
        "bits_per_byte": -documents.logprob / math.log(2) / n_bytes if n_bytes else float("nan"),
    }
    if instances is not None:
        result["packed"] = {
            "loss": instances.loss(),
            "perplexity": math.exp(instances.loss()) if instances.tokens else float("nan"),
            "tokens": instances.tokens,
            "instances": instances.units,
        }
    return result | {"flops": documents.flops + (instances.flops if instances is not None else 0.0)}


def lm_loss(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_length: int,
    stride: int = 0,
    batch_tokens: int = 16384,
    device: str = "cpu",
    desc: str = "held-out",
    show_progress: bool = True,
    packed: bool = True,
) -> dict:
    """Loss (mean NLL in nats) and perplexity per predicted token over `texts`, and bits per byte of
    text (comparable across tokenizers); with `packed`, the same on packed instances; FLOPs spent."""
    bos = prefix_token(tokenizer)
    documents, instances = Tally(), Tally()
    batch_tokens = max(batch_tokens, max_length)
    for r in readings(
        tokenizer, texts, max_length=max_length, stride=stride, packed=packed, desc=desc, show_progress=show_progress
    ):
        documents.add(model, r.documents, r.windows, bos, batch_tokens, device)
        if packed:
            instances.add(model, r.instances, r.instance_windows, bos, batch_tokens, device)
    return summary(texts, documents, instances if packed else None)

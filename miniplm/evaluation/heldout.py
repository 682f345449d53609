"""Held-out language modelling: loss and perplexity per token of a model on a set of documents.

Each document is read as [BOS] + tokens (EOS where the tokenizer has no
BOS), exactly as the score stage reads it, so every token is predicted once;
long documents go through windows of `max_length` tokens. The loss is the
mean negative log-likelihood over all predicted tokens of all documents.
"""

from __future__ import annotations

import math
import sys
from itertools import islice
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from miniplm.config import InputSpec, expand_input
from miniplm.corpus.readers import RawDoc, read_input
from miniplm.errors import ConfigError
from miniplm.rundir import RunDir
from miniplm.scoring.logprobs import batch_logprobs
from miniplm.scoring.windows import plan_batches, prefix_token, windows_for

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


def lm_loss(model, tokenizer, texts: list[str], *, max_length: int, stride: int = 0, batch_tokens: int = 16384,
            device: str = "cpu", desc: str = "held-out", show_progress: bool = True) -> dict:
    """Loss (mean NLL in nats) and perplexity per predicted token over `texts`, and bits per byte of
    text (comparable across tokenizers)."""
    bos = prefix_token(tokenizer)
    saved, tokenizer.model_max_length = tokenizer.model_max_length, sys.maxsize  # windowed here, not truncated
    total, count = 0.0, 0
    bar = tqdm(total=len(texts), desc=desc, unit="doc", disable=not show_progress, dynamic_ncols=True)
    try:
        for start in range(0, len(texts), CHUNK_DOCS):  # token lists of a large split would not fit in memory
            chunk = texts[start : start + CHUNK_DOCS]
            sequences = [np.asarray(t, dtype=np.int64) for t in tokenizer(chunk, add_special_tokens=False)["input_ids"]]
            windows = [w for d, seq in enumerate(sequences) for w in windows_for(d, len(seq), max_length, stride)]
            for batch in plan_batches(windows, max(batch_tokens, max_length)):
                for lp in batch_logprobs(batch, sequences, {"model": model}, bos, device)["model"]:
                    total += float(lp.double().sum())
                    count += lp.numel()
            bar.update(len(chunk))
    finally:
        tokenizer.model_max_length = saved
        bar.close()
    loss = -total / count if count else float("nan")
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"loss": loss, "perplexity": math.exp(loss) if count else float("nan"), "tokens": count,
            "documents": len(texts), "bits_per_byte": -total / math.log(2) / n_bytes if n_bytes else float("nan")}

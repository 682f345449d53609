"""The cheap model: hashed words and word pairs, and a ridge regression per score.

Measured against fastText (classifiers over quantile classes) and the teacher's own input
embeddings averaged over a document's tokens, with ridge (benchmarks/proxy_bench.py), it agreed
with the LM scores as well as the best of them at a tenth of fastText's fitting time and twice the
embeddings' prediction speed, with no dependency beyond scikit-learn. It predicts two numbers per
unit: the difference score per token (what the selection ranks by) and the teacher's log-prob per
token (what the noise floor reads).

FLOPs counted are the model's arithmetic (the ridge solver's products and the predictions'); hashing
the words is CPU work that does no floating-point arithmetic to speak of, reported as seconds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from miniplm.files import atomic_path, atomic_write_json
from miniplm.schema.proxy import ProxyConfig

TARGETS = ("difference", "teacher")  # per token: teacher minus reference, and teacher


@dataclass
class Fit:
    """What fitting cost."""

    units: int
    seconds: float
    flops: float
    iterations: list[int] = field(default_factory=list)


@dataclass
class HashedRidge:
    word_ngrams: int
    hash_bits: int
    alpha: float
    coef: np.ndarray | None = None  # (len(TARGETS), 2**hash_bits), float32
    intercept: np.ndarray | None = None  # (len(TARGETS),)

    @classmethod
    def from_config(cls, cfg: ProxyConfig) -> "HashedRidge":
        return cls(cfg.word_ngrams, cfg.hash_bits, cfg.alpha)

    def features(self, texts: Sequence[str]):
        """Each text's hashed word (and word-pair) counts, scaled to unit length: a sparse matrix."""
        from sklearn.feature_extraction.text import HashingVectorizer

        vectorizer = HashingVectorizer(
            n_features=2**self.hash_bits,
            ngram_range=(1, self.word_ngrams),
            alternate_sign=False,
            norm="l2",
            dtype=np.float32,
        )
        return vectorizer.transform(texts)

    def fit(self, texts: Sequence[str], targets: np.ndarray) -> Fit:
        """Fit on `texts` and their scores (one column per TARGETS)."""
        from sklearn.linear_model import Ridge

        start = time.perf_counter()
        x = self.features(texts)
        ridge = Ridge(alpha=self.alpha, solver="lsqr", fit_intercept=True).fit(x, targets)
        self.coef = ridge.coef_.astype(np.float32)
        self.intercept = np.asarray(ridge.intercept_, dtype=np.float64)
        iterations = [int(i) for i in np.atleast_1d(ridge.n_iter_)]
        # each LSQR step multiplies by X and by X^T (2 FLOPs a stored value each) and updates a few
        # vectors as long as the features and the units
        per_step = 4.0 * x.nnz + 10.0 * (x.shape[0] + x.shape[1])
        return Fit(len(texts), time.perf_counter() - start, per_step * sum(iterations), iterations)

    def predict(self, texts: Sequence[str]) -> tuple[np.ndarray, float]:
        """(per text, one column per TARGETS; the FLOPs it took)."""
        if self.coef is None or self.intercept is None:
            raise RuntimeError("the proxy model is not fitted")
        x = self.features(texts)
        predicted = np.asarray(x @ self.coef.T, dtype=np.float64) + self.intercept
        return predicted, 2.0 * x.nnz * len(TARGETS) + x.shape[0] * len(TARGETS)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "weights.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, coef=self.coef, intercept=self.intercept)
        settings = {"word_ngrams": self.word_ngrams, "hash_bits": self.hash_bits, "alpha": self.alpha}
        atomic_write_json(folder / "model.json", {"kind": "hashed-ridge", "targets": list(TARGETS), **settings})

    @classmethod
    def load(cls, folder: Path) -> "HashedRidge":
        settings = json.loads((folder / "model.json").read_text())
        with np.load(folder / "weights.npz") as weights:
            coef, intercept = weights["coef"], weights["intercept"]
        return cls(settings["word_ngrams"], settings["hash_bits"], settings["alpha"], coef, intercept)

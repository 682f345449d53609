#!/usr/bin/env python3
"""The proxy scorer: which cheap model, how fast it predicts, how long it fits.

    python benchmarks/proxy_bench.py [--labels RUN_DIR] [--docs 4000] [--fit-sizes 10000 100000]

1. Candidates. On every main-split document of a run whose LM scores cover all of them (default:
   the bundled corpus, every document, scored as the demo scores it; made on first use, about five
   minutes on 2 cores), 5-fold cross-validated Spearman with the LM scores (difference and teacher
   log-prob per token), fitting time and one-core prediction speed of
   - hashing: scikit-learn's hashing vectorizer and ridge (miniplm/proxy/model.py), words alone and
     words with word pairs (the default);
   - fastText: a classifier over 8 quantile classes of each score, predicting the expected value
     (when the fasttext-wheel package is installed);
   - embeddings: the teacher's own input embeddings averaged over a document's tokens, with ridge.
2. Prediction, one core, on web-like documents (paragraphs of the bundled corpus spliced to a
   log-normal length, median 2,500 characters): the model alone, counting the teacher's tokens
   (which the token budgets need, as the score stage counts them), and both: what a proxy task does
   per unit; then with token counts estimated from characters (proxy.token_counts: estimated), and
   how far such estimates miss on the labelled documents.
3. Fitting on 10k and 100k labelled web-like documents.
"""

from __future__ import annotations

import os

for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # one core: the figures are per core
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from miniplm.proxy.agreement import spearman  # noqa: E402
from miniplm.proxy.model import HashedRidge  # noqa: E402
from miniplm.proxy.proxy import estimated_tokens, tokens_per_char  # noqa: E402
from miniplm.schema.proxy import ProxyConfig  # noqa: E402


def labelled_run(path: Path) -> Path:
    """A run whose LM scores cover every main-split document: the demo's job on the whole bundled corpus."""
    if (path / "scores").exists() and any((path / "scores").glob("shard-*.parquet")):
        return path
    job = yaml.safe_load((REPO / "jobs" / "demo.yaml").read_text())
    job["run_dir"] = str(path)
    for spec in job["corpus"]["inputs"]:
        spec["path"] = str(REPO / spec["path"])
        spec.pop("limit", None)
    for key in ("tokenize", "students", "eval"):
        job.pop(key, None)
    job_file = path.parent / f"{path.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(yaml.safe_dump(job))
    for stage in ("prepare", "train-reference", "score"):
        subprocess.run([sys.executable, "-m", "miniplm", stage, str(job_file), "-q"], check=True, cwd=REPO)
    return path


def labels(run: Path) -> tuple[list[str], np.ndarray]:
    scores = pl.read_parquet(str(run / "scores" / "*.parquet"))
    docs = pl.read_parquet(str(run / "docs" / "main" / "*.parquet"), columns=["id", "text"])
    frame = scores.join(docs, on="id").filter(pl.col("n_tokens") > 0)
    n = frame["n_tokens"].to_numpy()
    t, r = frame["teacher_logprob"].to_numpy(), frame["reference_logprob"].to_numpy()
    return frame["text"].to_list(), np.stack([(t - r) / n, t / n], axis=1)


class Hashing:
    def __init__(self, ngrams: int):
        self.model = HashedRidge.from_config(ProxyConfig(word_ngrams=ngrams))

    def fit(self, texts, targets):
        self.model.fit(texts, targets)
        return self

    def predict(self, texts):
        return self.model.predict(texts)[0]


class FastTextQuantiles:
    """fastText classifiers over quantile classes; the expected value under the predicted classes.
    The probabilities come from the output matrix and the sentence vector: fasttext-wheel 0.9.2's own
    `predict(k=...)` returns one probability repeated under numpy 2."""

    classes = 8

    def fit(self, texts, targets):
        import fasttext

        lines = [" ".join(t.split()) for t in texts]
        self.models = []
        for column in targets.T:
            edges = np.quantile(column, np.linspace(0, 1, self.classes + 1)[1:-1])
            label = np.digitize(column, edges)
            centers = np.array(
                [np.median(column[label == k]) if (label == k).any() else 0.0 for k in range(self.classes)]
            )
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                f.writelines(f"__label__{k} {line}\n" for k, line in zip(label, lines))
            model = fasttext.train_supervised(f.name, epoch=25, lr=0.5, wordNgrams=2, dim=32, verbose=0, thread=1)
            os.unlink(f.name)
            order = [int(name.removeprefix("__label__")) for name in model.get_labels()]
            self.models.append((model, centers[order]))
        return self

    def predict(self, texts):
        lines = [" ".join(t.split()) for t in texts]
        out = []
        for model, centers in self.models:
            vectors = np.stack([model.get_sentence_vector(line) for line in lines])
            z = vectors @ model.get_output_matrix().T
            p = np.exp(z - z.max(axis=1, keepdims=True))
            out.append((p / p.sum(axis=1, keepdims=True)) @ centers)
        return np.stack(out, axis=1)


class TeacherEmbeddings:
    """The teacher's input embeddings averaged over a document's tokens, and ridge."""

    def __init__(self):
        from transformers import AutoModelForCausalLM

        from miniplm.models.loading import load_tokenizer, resolve_model

        self.tokenizer = load_tokenizer("smollm2-135m")
        model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"))
        self.embeddings = model.get_input_embeddings().weight.detach().float().numpy()

    def features(self, texts):
        import scipy.sparse as sp

        from miniplm.models.text_tokens import token_ids

        ids = token_ids(self.tokenizer, texts)
        rows = np.repeat(np.arange(len(ids)), [len(i) for i in ids])
        counts = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, np.concatenate(ids))), shape=(len(ids), len(self.embeddings))
        )
        return sp.diags(1.0 / np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1)) @ counts @ self.embeddings

    def fit(self, texts, targets):
        from sklearn.linear_model import Ridge

        self.ridge = Ridge(alpha=1.0).fit(self.features(texts), targets)
        return self

    def predict(self, texts):
        return self.ridge.predict(self.features(texts))


def candidates() -> dict:
    found = {
        "hashing, words": lambda: Hashing(1),
        "hashing, words + pairs (default)": lambda: Hashing(2),
        "teacher embeddings + ridge": TeacherEmbeddings,
    }
    try:
        import fasttext  # noqa: F401

        found["fastText, 8 quantile classes"] = FastTextQuantiles
    except ImportError:
        print("fastText: skipped (pip install fasttext-wheel to measure it)")
    return found


def web_like(n: int, seed: int = 0) -> list[str]:
    """Documents spliced from the bundled corpus's paragraphs, of log-normal length (median 2,500 chars)."""
    texts = pl.read_parquet(str(REPO / "data" / "sample" / "*.parquet"))["text"].to_list()
    paragraphs = [p for t in texts for p in t.split("\n\n") if len(p) > 40]
    rng = np.random.default_rng(seed)
    docs = []
    for length in np.minimum(rng.lognormal(np.log(2500), 0.8, n), 20_000):
        parts, size = [], 0
        while size < length:
            p = paragraphs[rng.integers(len(paragraphs))]
            parts.append(p)
            size += len(p)
        docs.append("\n\n".join(parts)[: int(length)])
    return docs


def estimate_error(run: Path) -> tuple[int, int]:
    """(exact, estimated) tokens of half the labelled documents, the ratio taken from the other half."""
    scores = pl.read_parquet(str(run / "scores" / "*.parquet"), columns=["id", "doc_tokens"])
    docs = pl.read_parquet(str(run / "docs" / "main" / "*.parquet"), columns=["id", "source", "text"])
    frame = docs.join(scores, on="id")
    half = pl.Series(np.random.default_rng(1).uniform(size=frame.height) < 0.5)
    guessed = estimated_tokens(frame.filter(~half), tokens_per_char(frame.filter(half)))
    return int(frame.filter(~half)["doc_tokens"].sum()), int(guessed.sum())


def rate(fn, items) -> float:
    start = time.perf_counter()
    fn(items)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, default=REPO / "runs" / "proxy-bench-labels")
    parser.add_argument("--docs", type=int, default=4000, help="web-like documents timed for prediction")
    parser.add_argument("--fit-sizes", type=int, nargs="*", default=[10_000, 100_000])
    args = parser.parse_args()

    texts, targets = labels(labelled_run(args.labels))
    web = web_like(args.docs)
    print(f"1. candidates: {len(texts):,} labelled documents of {args.labels}, 5-fold cross-validated")
    print(f"   {'model':34s} {'Spearman diff':>13s} {'teacher':>8s} {'fit s':>6s} {'docs/s/core':>12s}")
    folds = np.random.default_rng(0).integers(0, 5, len(texts))
    for name, make in candidates().items():
        predicted, fit_seconds = np.zeros_like(targets), 0.0
        for k in range(5):
            train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            start = time.perf_counter()
            model = make().fit([texts[i] for i in train], targets[train])
            fit_seconds += time.perf_counter() - start
            predicted[test] = model.predict([texts[i] for i in test])
        d, t = (spearman(predicted[:, j], targets[:, j]) for j in range(2))
        speed = rate(model.predict, web)
        print(f"   {name:34s} {d:13.3f} {t:8.3f} {fit_seconds / 5:6.2f} {speed:12,.0f}")

    from miniplm.models.loading import load_tokenizer
    from miniplm.models.text_tokens import token_ids

    tokenizer = load_tokenizer("smollm2-135m")
    tokenizer.model_max_length = sys.maxsize
    model = HashedRidge.from_config(ProxyConfig())
    model.fit(texts, targets)
    count = lambda docs: token_ids(tokenizer, docs)  # noqa: E731
    chars = sum(len(d) for d in web) / len(web)
    print(f"2. prediction, one core, {len(web):,} web-like documents ({chars:,.0f} characters on average)")
    print(f"   the model alone (hashing, ridge):      {rate(model.predict, web):8,.0f} documents/s")
    print(f"   counting the teacher's tokens:          {rate(count, web):8,.0f} documents/s")
    both = rate(lambda d: (count(d), model.predict(d)), web)
    print(f"   both, as a proxy task does per unit:    {both:8,.0f} documents/s  (token_counts: exact)")
    ratio = {"*": 1 / 4.0}  # any ratio: the time is the characters' count
    frame = pl.DataFrame({"source": ["web"] * len(web), "text": web})
    guess = lambda d: estimated_tokens(frame.head(len(d)), ratio)  # noqa: E731
    both = rate(lambda d: (guess(d), model.predict(d)), web)
    print(f"   with estimated token counts:            {both:8,.0f} documents/s  (token_counts: estimated)")
    exact, guessed = estimate_error(args.labels)
    print(
        f"   estimated counts on the labelled documents (ratio of half, judged on the other half): total "
        f"{guessed / exact - 1:+.2%}"
    )

    print("3. fitting, one core, on web-like documents")
    for n in args.fit_sizes:
        docs = web_like(n, seed=n)
        noisy = model.predict(docs)[0] + np.random.default_rng(n).normal(scale=0.1, size=(n, 2))
        fresh = HashedRidge.from_config(ProxyConfig())
        fit = fresh.fit(docs, noisy)
        print(f"   {n:>9,} units: {fit.seconds:7.1f} s ({n / fit.seconds:,.0f} units/s), {fit.flops:.3g} FLOPs")


if __name__ == "__main__":
    main()

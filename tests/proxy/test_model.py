import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import HashingVectorizer

from miniplm.proxy.model import TARGETS, HashedRidge
from miniplm.schema.proxy import ProxyConfig

GOOD = "river stone bread light morning garden letter window".split()
BAD = "zxq vrk plom quib trel snad wub mox".split()


def corpus(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts mixing two vocabularies; the targets are the share of the first and a shifted copy."""
    rng = np.random.default_rng(seed)
    share = rng.uniform(0, 1, n)
    texts = [
        " ".join(rng.choice(GOOD if rng.uniform() < s else BAD) for _ in range(rng.integers(20, 60))) for s in share
    ]
    good = np.array([sum(w in GOOD for w in t.split()) / len(t.split()) for t in texts])
    return texts, np.stack([good, good - 3.0], axis=1)


def test_it_learns_a_score_carried_by_the_words_and_ranks_unseen_texts_by_it():
    texts, targets = corpus(400, 0)
    model = HashedRidge.from_config(ProxyConfig(alpha=0.1))
    fit = model.fit(texts, targets)
    assert fit.units == 400 and fit.iterations and all(i > 0 for i in fit.iterations) and fit.flops > 0
    unseen, truth = corpus(200, 1)
    predicted, _ = model.predict(unseen)
    assert predicted.shape == (200, len(TARGETS))
    for column in range(len(TARGETS)):
        assert spearmanr(predicted[:, column], truth[:, column]).statistic > 0.9


def test_predictions_survive_a_save_and_load_and_their_flops_count_the_stored_features(tmp_path):
    texts, targets = corpus(120, 2)
    model = HashedRidge.from_config(ProxyConfig(word_ngrams=1, hash_bits=12))
    model.fit(texts, targets)
    model.save(tmp_path / "model")
    again = HashedRidge.load(tmp_path / "model")
    (a, flops), (b, _) = model.predict(texts[:30]), again.predict(texts[:30])
    np.testing.assert_array_equal(a, b)
    x = HashingVectorizer(n_features=2**12, alternate_sign=False, norm="l2").transform(texts[:30])
    assert flops == 2 * x.nnz * len(TARGETS) + 30 * len(TARGETS)
    # the same numbers as the fitted linear map computed apart
    np.testing.assert_allclose(a, x @ model.coef.T.astype(np.float64) + model.intercept, rtol=1e-5, atol=1e-6)


def test_an_unfitted_model_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        HashedRidge.from_config(ProxyConfig()).predict(["text"])

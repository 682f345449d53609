"""Packed batches: the plan, and each attention kernel the CPU can run, against separate documents."""

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from miniplm.scoring.logprobs import Scorer
from miniplm.scoring.packing import attention_inputs, plan_packed, position_ids, segments
from miniplm.scoring.windows import plan_batches, windows_for
from tests.scoring.test_score import reference_sum


def _windows(lengths, max_length, stride=0):
    return [w for d, n in enumerate(lengths) for w in windows_for(d, n, max_length, stride)]


def test_plan_takes_every_window_once_within_the_budget_and_wastes_little():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(400), 0.8, size=3000).astype(int), 1, 5000)
    windows = _windows(lengths, 2048, stride=16)
    streams = plan_packed(windows, 65536)
    assert sorted((w.doc, w.start) for s in streams for w in s) == sorted((w.doc, w.start) for w in windows)
    used = [sum(w.length for w in s) for s in streams]
    assert max(used) <= 65536
    assert sum(used) / (len(streams) * 65536) > 0.97  # padded would be the length-sorted rows' padding
    assert plan_packed(list(reversed(windows)), 65536) == streams  # a pure function of the windows
    padded = plan_batches(windows, 65536)
    assert len(streams) < len(padded)


def test_segments_and_positions():
    assert segments([3, 2], 8) == [3, 2, 3] and segments([3, 2], 5) == [3, 2]
    assert segments([100], 400) == [100, 128, 128, 44]  # padding in short pieces: little attention
    assert position_ids([3, 2, 3]).tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    mask = attention_inputs([2, 1], "sdpa", "cpu", torch.float32)["attention_mask"][0, 0]
    allowed = (mask == 0).int().tolist()
    assert allowed == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    cu = attention_inputs([2, 1, 4], "flash_attention_2", "cpu", torch.bfloat16)
    assert cu["cu_seq_lens_q"].tolist() == [0, 2, 3, 7] and cu["max_length_q"] == 4


def _score(scorer, sequences, max_length, stride):
    windows = _windows([len(s) for s in sequences], max_length, stride)
    batches = scorer.plan(windows)
    sums = {name: np.zeros(len(sequences)) for name in scorer.models}
    for batch, results in zip(batches, scorer.run(batches, sequences)):
        for name, per_window in results.items():
            for w, lp in zip(batch, per_window):
                sums[name][w.doc] += float(lp.double().sum())
    return sums, len(batches)


def test_packed_windows_score_as_separate_documents_under_eager_attention(tiny_models):
    """Eager attention reads the dense additive mask too (sdpa is in test_score.py) and gives each
    document's plain float64 log-probability. flex_attention and flash-attn, the kernels packing is
    for, run on CUDA only (torch's CPU code for flex_attention fails to compile this mask, and has
    no float64): tests/gpu/ holds them to this path."""
    lengths, max_length, stride = [1, 2, 7, 15, 16, 17, 31, 33, 40], 16, 5
    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, 300, size=n) for n in lengths]
    bos = AutoTokenizer.from_pretrained(tiny_models["teacher"]).bos_token_id
    model = AutoModelForCausalLM.from_pretrained(
        tiny_models["teacher"], dtype=torch.float64, attn_implementation="eager"
    ).eval()
    sums, n_batches = _score(
        Scorer({"m": model}, bos, "cpu", packed=True, batch_tokens=64), sequences, max_length, stride
    )
    assert n_batches > 1
    plain = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float64).eval()
    expected = [reference_sum(plain, bos, s.tolist(), max_length, stride) for s in sequences]
    np.testing.assert_allclose(sums["m"], expected, rtol=1e-9)

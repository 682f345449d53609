"""Token ids packed at the vocabulary's bit width, and 8-bit log-probs with a scale per position."""

import numpy as np
import pytest

from miniplm.training.logit_codec import dequantize, id_bits, pack_ids, quantize, unpack_ids


def test_bit_widths_of_the_vocabularies_miniplm_meets():
    assert [id_bits(v) for v in (300, 49_152, 65_536, 65_537, 151_936)] == [9, 16, 16, 17, 18]


@pytest.mark.parametrize("bits", [1, 9, 16, 17, 18, 31])
def test_ids_round_trip_in_exactly_their_bits(bits):
    ids = np.random.default_rng(bits).integers(0, 2**bits, size=1001)
    data = pack_ids(ids, bits)
    assert len(data) == -(-1001 * bits // 8)
    assert np.array_equal(unpack_ids(data, 1001, bits), ids)


def test_eight_bit_log_probs_are_within_half_a_step_of_the_values():
    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet(np.full(33, 0.2), size=200))  # peaked: values spanning tens of nats
    codes, scales = quantize(logp)
    back = dequantize(codes, scales)
    hi, step = scales[:, 0].astype(np.float64), scales[:, 1].astype(np.float64)
    # half a step, and the float16 rounding of the largest value
    assert (np.abs(back - logp) <= step[:, None] / 2 + np.abs(hi[:, None] - logp.max(1, keepdims=True)) + 1e-6).all()
    assert codes.dtype == np.uint8 and scales.dtype == np.float16
    # each probability's relative error is at most what the docstring states for its position's range
    span = logp.max(1) - logp.min(1)
    assert (np.abs(np.expm1(back - logp)) <= (span / 255 / 2 + 0.01)[:, None] * 1.05).all()


def test_slots_not_in_use_and_minus_infinity_do_not_widen_the_scale():
    values = np.array([[-0.1, -2.0, -np.inf, -50.0]], dtype=np.float32)
    codes, scales = quantize(values, valid=np.array([[True, True, True, False]]))
    assert float(scales[0, 1]) == pytest.approx((2.0 - 0.1) / 255, rel=1e-2)
    assert codes[0, 2] == 255  # -inf: the least value the position can hold

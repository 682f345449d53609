"""Exact medians over many sorted arrays without holding them: the noise floor of a sharded selection.

Each rank task writes its shard's teacher log-probs per token, sorted, as a .npy file. The median and
the median absolute deviation of all of them together are found by bisecting on the value (over the
64-bit order-preserving image of a float), each step counting with a binary search in every array.
Opened as memory maps, each count reads a few pages per array: the memory is the page cache's, and
the result is bit for bit what numpy's median gives on the concatenation.
"""

from __future__ import annotations

import struct
from typing import Callable, Sequence

import numpy as np

_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def _image(x: float) -> int:
    """An unsigned 64-bit integer in the order of the float (for floats other than NaN)."""
    bits = struct.unpack("<Q", struct.pack("<d", x))[0]
    return _ALL ^ bits if bits & _SIGN else bits | _SIGN


def _value(image: int) -> float:
    bits = image & ~_SIGN if image & _SIGN else _ALL ^ image
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def _smallest(count_at_most: Callable[[float], int], k: int, low: float, high: float) -> float:
    """The smallest value v in [low, high] with count_at_most(v) > k: the k-th smallest (from 0)."""
    lo, hi = _image(low), _image(high)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_at_most(_value(mid)) > k:
            hi = mid
        else:
            lo = mid + 1
    return _value(lo)


def _middle(count_at_most: Callable[[float], int], n: int, low: float, high: float) -> float:
    """The median as numpy computes it: the middle value, or the mean of the two middle ones."""
    upper = _smallest(count_at_most, n // 2, low, high)
    if n % 2:
        return upper
    lower = _smallest(count_at_most, n // 2 - 1, low, upper)
    return float((np.float64(lower) + np.float64(upper)) / 2)


def median(arrays: Sequence[np.ndarray]) -> float:
    """The median of the values of every (sorted, finite) array together."""
    arrays = [a for a in arrays if len(a)]
    n = sum(len(a) for a in arrays)
    if not n:
        raise ValueError("no values")
    low, high = min(float(a[0]) for a in arrays), max(float(a[-1]) for a in arrays)
    return _middle(lambda v: sum(int(np.searchsorted(a, v, side="right")) for a in arrays), n, low, high)


def _within(a: np.ndarray, center: float, radius: float) -> int:
    """How many x of the sorted array a have fl(|x - center|) <= radius. Such x are one run of a:
    x - center rounds monotonically in x. A binary search finds its ends to within rounding, and a
    few steps settle them on the computed differences themselves."""
    n = len(a)
    hi = int(np.searchsorted(a, center + radius, side="right"))
    while hi > 0 and a[hi - 1] >= center and a[hi - 1] - center > radius:
        hi -= 1
    while hi < n and a[hi] >= center and a[hi] - center <= radius:
        hi += 1
    lo = int(np.searchsorted(a, center - radius, side="left"))
    while lo > 0 and a[lo - 1] < center and center - a[lo - 1] <= radius:
        lo -= 1
    while lo < n and a[lo] < center and center - a[lo] > radius:
        lo += 1
    return max(hi - lo, 0)


def median_deviation(arrays: Sequence[np.ndarray], center: float) -> float:
    """The median of |x - center| over the values of every (sorted, finite) array together."""
    arrays = [a for a in arrays if len(a)]
    n = sum(len(a) for a in arrays)
    if not n:
        raise ValueError("no values")
    high = max(max(abs(float(a[0]) - center), abs(float(a[-1]) - center)) for a in arrays)
    return _middle(lambda r: sum(_within(a, center, r) for a in arrays), n, 0.0, high)

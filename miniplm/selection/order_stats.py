"""Exact medians over many sorted arrays without holding them: the noise floor of a sharded selection.

Each rank task writes its run's teacher log-probs per token, sorted, as a .npy file. The median and
the median absolute deviation of all of them together are found by bisecting on the value (over the
64-bit order-preserving image of a float), each step counting with a binary search in every array.
The files are read a value at a time (`SortedFile`, a few hundred reads per file), not mapped: a
mapped file read from a warm page cache would count whole files in the process's memory. The
result is bit for bit what numpy's median gives on the concatenation.
"""

from __future__ import annotations

import bisect
import os
import struct
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

_SIGN = 1 << 63
_ALL = (1 << 64) - 1


class SortedFile:
    """The float64 values of a one-dimensional .npy file, read one at a time when indexed."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
            self._offset = f.tell()
        if dtype != np.dtype("<f8") or len(shape) != 1:
            raise ValueError(f"{path}: not a one-dimensional float64 array")
        self._length = shape[0]
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> float:
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(i)
        return struct.unpack("<d", os.pread(self._fd, 8, self._offset + 8 * i))[0]

    def __del__(self) -> None:
        if hasattr(self, "_fd"):
            os.close(self._fd)


def _search(a, value: float, side: str) -> int:
    """np.searchsorted for an array, bisect for a SortedFile."""
    if isinstance(a, np.ndarray):
        return int(np.searchsorted(a, value, side=side))
    return (bisect.bisect_right if side == "right" else bisect.bisect_left)(a, value)


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


def median(arrays: Sequence) -> float:
    """The median of the values of every (sorted, finite) array or SortedFile together."""
    arrays = [a for a in arrays if len(a)]
    n = sum(len(a) for a in arrays)
    if not n:
        raise ValueError("no values")
    low, high = min(float(a[0]) for a in arrays), max(float(a[-1]) for a in arrays)
    return _middle(lambda v: sum(_search(a, v, "right") for a in arrays), n, low, high)


def _within(a, center: float, radius: float) -> int:
    """How many x of the sorted array a have fl(|x - center|) <= radius. Such x are one run of a:
    x - center rounds monotonically in x. A binary search finds its ends to within rounding, and a
    few steps settle them on the computed differences themselves."""
    n = len(a)
    hi = _search(a, center + radius, "right")
    while hi > 0 and a[hi - 1] >= center and a[hi - 1] - center > radius:
        hi -= 1
    while hi < n and a[hi] >= center and a[hi] - center <= radius:
        hi += 1
    lo = _search(a, center - radius, "left")
    while lo > 0 and a[lo - 1] < center and center - a[lo - 1] <= radius:
        lo -= 1
    while lo < n and a[lo] < center and center - a[lo] > radius:
        lo += 1
    return max(hi - lo, 0)


def median_deviation(arrays: Sequence, center: float) -> float:
    """The median of |x - center| over the values of every (sorted, finite) array or SortedFile together."""
    arrays = [a for a in arrays if len(a)]
    n = sum(len(a) for a in arrays)
    if not n:
        raise ValueError("no values")
    high = max(max(abs(float(a[0]) - center), abs(float(a[-1]) - center)) for a in arrays)
    return _middle(lambda r: sum(_within(a, center, r) for a in arrays), n, 0.0, high)

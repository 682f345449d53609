import numpy as np
import pytest

from miniplm.config import SelectConfig
from miniplm.selection.noise_floor import noise_floor, noise_floor_sorted
from miniplm.selection.order_stats import SortedFile, median, median_deviation


def parts(rng: np.random.Generator) -> list[np.ndarray]:
    """Sorted parts, some empty, with ties (rounded values or a few repeated ones)."""
    out = []
    for _ in range(rng.integers(1, 6)):
        values = rng.normal(-3, 1, rng.integers(0, 60))
        values = (
            np.round(values, rng.integers(1, 6)) if rng.random() < 0.5 else rng.choice([-1.5, -2.0, -3.25], len(values))
        )
        out.append(np.sort(values))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_median_and_deviation_of_sorted_parts_are_numpys_on_their_concatenation(tmp_path, seed):
    rng = np.random.default_rng(seed)
    arrays = parts(rng)
    values = np.concatenate(arrays)
    if not len(values):
        with pytest.raises(ValueError, match="no values"):
            median(arrays)
        return
    center = np.median(values)
    assert median(arrays) == center
    assert median_deviation(arrays, center) == np.median(np.abs(values - center))
    files = []
    for i, a in enumerate(arrays):
        np.save(tmp_path / f"{i}.npy", a)
        files.append(SortedFile(tmp_path / f"{i}.npy"))
    assert median(files) == center and median_deviation(files, center) == np.median(np.abs(values - center))
    cfg = SelectConfig(noise_floor_mads=2.0)
    assert noise_floor_sorted(cfg, files) == noise_floor(cfg, values)


def test_a_sorted_file_reads_its_values_and_refuses_other_arrays(tmp_path):
    np.save(tmp_path / "a.npy", np.array([-2.0, -1.5, 0.25]))
    f = SortedFile(tmp_path / "a.npy")
    assert len(f) == 3 and [f[0], f[1], f[-1]] == [-2.0, -1.5, 0.25]
    with pytest.raises(IndexError):
        f[3]
    np.save(tmp_path / "b.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="one-dimensional float64"):
        SortedFile(tmp_path / "b.npy")

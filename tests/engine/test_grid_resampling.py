"""Resampling back to the input grid: bilinear where the input is finer, area average where coarser, nodata kept out."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window

from engine.raster.grid_resampling import GridResampler, axis_weights

NODATA = 65535.0


def reader(array: np.ndarray):
    def read(window: Window) -> np.ndarray:
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        assert r >= 0 and c >= 0 and r + h <= array.shape[1] and c + w <= array.shape[2]  # reads stay inside
        return array[:, r : r + h, c : c + w].astype(np.float32)

    return read


@pytest.mark.parametrize(("source", "output"), [(20, 40), (20, 37), (37, 20), (40, 10), (7, 7), (1, 5), (5, 1)])
def test_weights_sum_to_one_and_stay_inside_the_source(source: int, output: int) -> None:
    weights = axis_weights(source, output)
    np.testing.assert_allclose(weights.weight.sum(axis=0), 1.0, atol=1e-6)
    assert weights.index.min() >= 0 and weights.index.max() < source
    assert weights.nearest.shape == (output,) and weights.nearest.max() < source


def test_upsampling_by_two_is_bilinear_between_pixel_centres() -> None:
    source = np.arange(4 * 6, dtype=np.float32).reshape(1, 4, 6) * 10
    resampler = GridResampler((4, 6), (8, 12), NODATA)
    values, present = resampler.resample(reader(source), Window(0, 0, 12, 8))
    assert present.all()
    # Independent reference: output centre (i + 0.5) / 2 - 0.5 in source pixels, clamped at the edges.
    y = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    x = np.clip((np.arange(12) + 0.5) / 2 - 0.5, 0, 5)
    expected = (y[:, None] * 6 + x[None, :]) * 10  # the source is linear in (row, col), so bilinear is exact
    np.testing.assert_allclose(values[0], expected, atol=1e-3)


def test_downsampling_averages_the_covered_pixels() -> None:
    rng = np.random.default_rng(0)
    source = rng.random((3, 8, 12)).astype(np.float32)
    values, present = GridResampler((8, 12), (4, 3), NODATA).resample(reader(source), Window(0, 0, 3, 4))
    expected = source.reshape(3, 4, 2, 3, 4).mean(axis=(2, 4))
    assert present.all()
    np.testing.assert_allclose(values, expected, atol=1e-6)


def test_nodata_never_mixes_into_values() -> None:
    source = np.full((2, 4, 4), 0.25, dtype=np.float32)
    source[1] = 0.75
    source[:, :, :2] = NODATA  # the left half has no data
    values, present = GridResampler((4, 4), (8, 8), NODATA).resample(reader(source), Window(0, 0, 8, 8))
    assert present[:, 3:].all() and not present[:, :3].any()
    np.testing.assert_allclose(values[0][present], 0.25, atol=1e-6)
    np.testing.assert_allclose(values[1][present], 0.75, atol=1e-6)
    nearest, has_data = GridResampler((4, 4), (8, 8), NODATA).nearest(reader(source), Window(0, 0, 8, 8))
    assert has_data[:, 4:].all() and not has_data[:, :4].any()
    np.testing.assert_array_equal(nearest[1][has_data], 0.75)


def test_windows_give_the_same_values_as_the_whole_grid() -> None:
    rng = np.random.default_rng(1)
    source = rng.random((2, 13, 17)).astype(np.float32)
    resampler = GridResampler((13, 17), (31, 40), NODATA)
    whole, _ = resampler.resample(reader(source), Window(0, 0, 40, 31))
    part, _ = resampler.resample(reader(source), Window(9, 5, 20, 11))
    np.testing.assert_allclose(part, whole[:, 5:16, 9:29], atol=1e-6)

"""Stitching: weighted means of tile probabilities, strip by strip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from engine.errors import InvalidInputError
from engine.inference.stitching import (
    STITCHING_STRATEGIES,
    StripAccumulator,
    blind_margin_px,
    cosine_profile,
    stitching_names,
    tile_weights,
)
from engine.inference.tiling import TilingSpec, iter_tile_rows, iter_tile_windows


def stitch_in_memory(
    image: NDArray[np.float32],
    predict,
    spec: TilingSpec,
    strategy: str,
) -> tuple[NDArray[np.float32], NDArray[np.bool_], list[int]]:
    """Tile an in-memory (C, H, W) image with zero padding, run ``predict`` per tile and stitch.

    Returns the stitched (K, H, W) probabilities, the valid mask and the row offsets the sink received.
    """
    _, height, width = image.shape
    tile = spec.tile_size_px
    padded = np.zeros((image.shape[0], height + 2 * tile, width + 2 * tile), dtype=np.float32)
    padded[:, :height, :width] = image
    received: list[tuple[int, NDArray[np.float32], NDArray[np.bool_]]] = []

    def sink(row_off: int, probs: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        received.append((row_off, probs.copy(), valid.copy()))

    accumulator = None
    for row in iter_tile_rows(height, width, spec):
        for window in row:
            r, c = int(window.row_off), int(window.col_off)
            tile_pixels = padded[:, r : r + tile, c : c + tile]
            probs = predict(tile_pixels)
            if accumulator is None:
                accumulator = StripAccumulator(probs.shape[0], height, width, spec, strategy)
            valid = np.zeros((tile, tile), dtype=bool)
            valid[: height - r, : width - c] = True
            accumulator.add(window, probs, valid)
        accumulator.finish_tile_row(sink, max_rows=7)
    probs_out = np.concatenate([p for _, p, _ in received], axis=1)
    valid_out = np.concatenate([v for _, _, v in received], axis=0)
    return probs_out, valid_out, [r for r, _, _ in received]


@st.composite
def stitch_cases(draw: st.DrawFn) -> tuple[int, int, TilingSpec, str, NDArray[np.float32]]:
    tile = draw(st.integers(min_value=2, max_value=24))
    overlap = draw(st.integers(min_value=0, max_value=tile - 1))
    height = draw(st.integers(min_value=1, max_value=60))
    width = draw(st.integers(min_value=1, max_value=60))
    strategy = draw(st.sampled_from(sorted(STITCHING_STRATEGIES)))
    raw = draw(st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=3, max_size=3))
    constant = np.asarray(raw, dtype=np.float32) / np.float32(sum(raw))
    return height, width, TilingSpec(tile, overlap), strategy, constant


@settings(max_examples=120, deadline=None)
@given(stitch_cases())
def test_constant_probabilities_stitch_to_the_same_constant(
    case: tuple[int, int, TilingSpec, str, NDArray[np.float32]],
) -> None:
    height, width, spec, strategy, constant = case

    def predict(tile_pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        shape = (3, tile_pixels.shape[1], tile_pixels.shape[2])
        return np.broadcast_to(constant[:, None, None], shape).astype(np.float32)

    image = np.zeros((1, height, width), dtype=np.float32)
    probs, valid, rows = stitch_in_memory(image, predict, spec, strategy)
    assert probs.shape == (3, height, width)
    assert valid.all()
    np.testing.assert_allclose(probs, np.broadcast_to(constant[:, None, None], probs.shape), rtol=1e-5, atol=1e-6)
    # Rows were handed out once each, in order.
    assert rows == sorted(rows) and rows[0] == 0


@settings(max_examples=60, deadline=None)
@given(stitch_cases())
def test_every_pixel_gets_positive_weight(case: tuple[int, int, TilingSpec, str, NDArray[np.float32]]) -> None:
    height, width, spec, strategy, _ = case
    total = np.zeros((height, width), dtype=np.float64)
    for window in iter_tile_windows(height, width, spec):
        weights = tile_weights(strategy, spec, window, height, width)
        r, c = int(window.row_off), int(window.col_off)
        rows, cols = min(spec.tile_size_px, height - r), min(spec.tile_size_px, width - c)
        total[r : r + rows, c : c + cols] += weights[:rows, :cols]
    assert total.min() > 0


def test_cosine_ramps_form_a_partition_of_unity_between_neighbours() -> None:
    spec = TilingSpec(16, 6)
    first = cosine_profile(spec, at_start=True, at_end=False)
    second = cosine_profile(spec, at_start=False, at_end=True)
    overlap_sum = first[spec.stride_px :] + second[: spec.overlap_px]
    np.testing.assert_allclose(overlap_sum, np.ones(6), atol=1e-6)
    assert first[0] == 1.0 and second[-1] == 1.0  # no ramp on the raster border
    # Weight 0 only on the blind margin (a quarter of the overlap, 1 px here) of the inner side.
    assert blind_margin_px(spec) == 1
    assert first[-1] == 0.0 and first[:-1].min() > 0
    assert second[0] == 0.0 and second[1:].min() > 0


@pytest.mark.parametrize("strategy", ["gaussian", "cosine"])
def test_blind_margins_give_no_weight_on_inner_sides_only(strategy: str) -> None:
    spec = TilingSpec(64, 20)  # blind margin 5 px
    profile = STITCHING_STRATEGIES[strategy]
    inner = profile(spec, False, False)
    assert np.all(inner[:5] == 0.0) and np.all(inner[-5:] == 0.0) and inner[5:-5].min() > 0
    border = profile(spec, True, True)  # both sides on the raster border: nothing is blind
    assert border.min() > 0


def test_gaussian_weights_are_never_zero_outside_the_blind_margins() -> None:
    spec = TilingSpec(64, 16)
    from rasterio.windows import Window

    weights = tile_weights("gaussian", spec, Window(48, 48, 64, 64), 300, 300)
    margin = blind_margin_px(spec)  # 4 px on every inner side, which all four are here
    assert weights[margin:-margin, margin:-margin].min() > 0
    assert weights[32, 32] == weights.max()
    corner = tile_weights("gaussian", spec, Window(0, 0, 64, 64), 300, 300)  # top and left on the raster border
    assert corner[:-margin, :-margin].min() > 0


def conv3x3_softmax(weights: NDArray[np.float32]):
    """A fixed 3x3 'valid-where-possible' convolution with zero padding followed by softmax over K."""

    def predict(image: NDArray[np.float32]) -> NDArray[np.float32]:
        _channels, height, width = image.shape
        padded = np.pad(image, ((0, 0), (1, 1), (1, 1)))
        logits = np.zeros((weights.shape[0], height, width), dtype=np.float64)
        for dy in range(3):
            for dx in range(3):
                patch = padded[:, dy : dy + height, dx : dx + width]
                logits += np.einsum("kc,chw->khw", weights[:, :, dy, dx], patch)
        logits -= logits.max(axis=0, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=0, keepdims=True)).astype(np.float32)

    return predict


@pytest.mark.parametrize("strategy", ["gaussian", "cosine", "center_crop"])
def test_translation_equivariant_model_result_does_not_depend_on_tiling(strategy: str) -> None:
    rng = np.random.default_rng(7)
    image = rng.normal(size=(2, 57, 61)).astype(np.float32)
    kernel = rng.normal(scale=0.8, size=(4, 2, 3, 3)).astype(np.float32)
    predict = conv3x3_softmax(kernel)
    expected = predict(image)  # the whole raster at once: the reference
    inner = np.s_[:, 1:-1, 1:-1]  # away from the raster border, where zero padding differs from tiles' padding
    results = []
    for spec in (TilingSpec(16, 4), TilingSpec(24, 8), TilingSpec(32, 12), TilingSpec(20, 6)):
        probs, valid, _ = stitch_in_memory(image, predict, spec, strategy)
        assert valid.all()
        # Only pixels on a tile's edge see the tile's zero padding, and every blend gives them no weight (blind
        # margins of at least 1 px, the reach of a 3x3 kernel): the result is the whole raster's.
        np.testing.assert_allclose(probs[inner], expected[inner], atol=1e-5)
        results.append(probs)
    for other in results[1:]:
        np.testing.assert_allclose(other[inner], results[0][inner], atol=1e-5)


def test_accumulator_memory_is_one_tile_row_of_the_width() -> None:
    spec = TilingSpec(32, 8)
    accumulator = StripAccumulator(5, height=10_000, width=300, spec=spec, strategy="cosine")
    # K sums and one weight plane of a tile row, plus one tile of scratch for the weighted probabilities.
    assert accumulator.nbytes == 5 * 32 * 300 * 4 + 32 * 300 * 4 + 5 * 32 * 32 * 4


def test_unknown_strategy_names_the_valid_choices() -> None:
    with pytest.raises(InvalidInputError, match="center_crop, cosine, gaussian"):
        StripAccumulator(2, 10, 10, TilingSpec(8, 2), strategy="median")
    assert stitching_names() == ["center_crop", "cosine", "gaussian"]


def test_adding_a_tile_of_another_tile_row_is_a_bug() -> None:
    from rasterio.windows import Window

    accumulator = StripAccumulator(2, 40, 40, TilingSpec(16, 4))
    with pytest.raises(ValueError, match="tile row"):
        accumulator.add(Window(0, 12, 16, 16), np.zeros((2, 16, 16), np.float32), np.ones((16, 16), bool))

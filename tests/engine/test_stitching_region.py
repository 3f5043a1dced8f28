"""The tile loop restricted to a region (a super-tile): exactly the whole-raster values, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from rasterio.windows import Window

from engine.inference.in_memory import ArraySink, ArrayTileSource
from engine.inference.pipeline import stitch_raster
from engine.inference.stitching import StripAccumulator, stitching_names
from engine.inference.tiling import TilingSpec, axis_offsets, iter_tile_windows, tiles_touching

K = 3


def predict(batch: NDArray[np.float32]) -> NDArray[np.float32]:
    """A deterministic per-pixel model whose probabilities vary across each tile (so blending matters)."""
    _, _, h, w = batch.shape
    ramp = np.linspace(0.0, 1.0, h * w, dtype=np.float32).reshape(h, w)
    logits = np.stack([batch[:, 0] * 3 + ramp, batch[:, 1] * 2 - ramp, batch[:, 2] + ramp * ramp], axis=1)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


class RegionSink:
    """Rows of one region, stored at their place in a raster-sized array (row_off counted from the region's top)."""

    def __init__(self, target: NDArray[np.float32], filled: NDArray[np.bool_], region: Window) -> None:
        self.target, self.filled, self.region = target, filled, region
        self.next_row = 0

    def write_rows(self, row_off: int, probs: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        assert row_off == self.next_row  # in order, each row once
        assert probs.shape[2] == self.region.width
        top, left = int(self.region.row_off) + row_off, int(self.region.col_off)
        rows = slice(top, top + probs.shape[1])
        cols = slice(left, left + probs.shape[2])
        assert not self.filled[rows, cols].any()
        self.target[:, rows, cols] = probs
        self.filled[rows, cols] = True
        self.next_row += probs.shape[1]


def border_in_blend_region(position: int, spec: TilingSpec, length: int) -> bool:
    """Whether two neighbouring tiles both straddle ``position`` (a border inside their overlap)."""
    straddling = [o for o in axis_offsets(length, spec) if o < position < o + spec.tile_size_px]
    return len(straddling) >= 2


@pytest.mark.parametrize("strategy", stitching_names())
def test_regions_reproduce_the_whole_raster_bit_for_bit(strategy: str) -> None:
    rng = np.random.default_rng(3)
    height, width = 150, 173
    image = rng.normal(size=(3, height, width)).astype(np.float32)
    valid = np.ones((height, width), dtype=bool)
    valid[:40, :70] = False  # tiles there have no valid pixel: skipped in both runs
    valid[100:103, :] = False
    spec = TilingSpec(32, 14)  # stride 18: the borders at 64 and 128 lie inside two tiles' overlap
    assert border_in_blend_region(64, spec, height) and border_in_blend_region(128, spec, width)
    whole = ArraySink(K, height, width)
    whole_stats = stitch_raster(
        ArrayTileSource(image, valid), whole, predict, spec, K, stitching=strategy, batch_size=1
    )

    pieced = np.full((K, height, width), np.nan, dtype=np.float32)
    filled = np.zeros((height, width), dtype=bool)
    tiles_run = 0
    for row_off in range(0, height, 64):
        for col_off in range(0, width, 64):
            region = Window(col_off, row_off, min(64, width - col_off), min(64, height - row_off))
            stats = stitch_raster(
                ArrayTileSource(image, valid), RegionSink(pieced, filled, region), predict, spec, K,
                stitching=strategy, batch_size=1, region=region,
            )  # fmt: skip
            assert stats.tile_count == tiles_touching(height, width, spec, region)
            tiles_run += stats.tiles_run
    assert filled.all()
    np.testing.assert_array_equal(pieced, whole.probabilities)  # exact: same tiles, weights and order per pixel
    assert tiles_run > whole_stats.tiles_run  # tiles straddling the borders ran twice


def test_region_run_touches_only_the_tiles_overlapping_it() -> None:
    spec = TilingSpec(32, 8)
    region = Window(48, 30, 20, 10)
    seen: list[tuple[int, int]] = []

    class Source(ArrayTileSource):
        def read_tile(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
            seen.append((int(window.row_off), int(window.col_off)))
            return super().read_tile(window)

    image = np.zeros((3, 100, 100), dtype=np.float32)
    sink = RegionSink(np.zeros((K, 100, 100), np.float32), np.zeros((100, 100), bool), region)
    stitch_raster(Source(image), sink, predict, spec, K, region=region)
    expected = [
        (int(w.row_off), int(w.col_off))
        for w in iter_tile_windows(100, 100, spec)
        if w.row_off < 40 and w.row_off + 32 > 30 and w.col_off < 68 and w.col_off + 32 > 48
    ]
    assert seen == expected
    assert sink.next_row == 10


@pytest.mark.parametrize("region", [Window(-1, 0, 10, 10), Window(0, 0, 101, 10), Window(5, 5, 0, 3)])
def test_accumulator_rejects_a_region_outside_the_raster(region: Window) -> None:
    with pytest.raises(ValueError, match="Region"):
        StripAccumulator(K, 100, 100, TilingSpec(32, 8), region=region)

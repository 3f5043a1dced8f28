"""Tiling: windows cover any raster, stay inside the padded raster, and their cores partition it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidInputError
from engine.inference.tiling import (
    TilingSpec,
    axis_offsets,
    core_window,
    iter_tile_rows,
    iter_tile_windows,
    tile_count,
    tile_grid_shape,
)


@st.composite
def raster_and_spec(draw: st.DrawFn) -> tuple[int, int, TilingSpec]:
    tile = draw(st.integers(min_value=1, max_value=40))
    overlap = draw(st.integers(min_value=0, max_value=tile - 1))
    height = draw(st.integers(min_value=1, max_value=130))
    width = draw(st.integers(min_value=1, max_value=130))
    return height, width, TilingSpec(tile, overlap)


@settings(max_examples=150, deadline=None)
@given(raster_and_spec())
def test_windows_cover_every_pixel(case: tuple[int, int, TilingSpec]) -> None:
    height, width, spec = case
    hits = np.zeros((height, width), dtype=np.int32)
    for window in iter_tile_windows(height, width, spec):
        r, c = int(window.row_off), int(window.col_off)
        hits[r : r + spec.tile_size_px, c : c + spec.tile_size_px] += 1
    assert hits.min() >= 1


@settings(max_examples=150, deadline=None)
@given(raster_and_spec())
def test_windows_are_tile_sized_and_inside_the_padded_raster(case: tuple[int, int, TilingSpec]) -> None:
    height, width, spec = case
    # Padding needed on the far side is less than one stride (or the tile, for rasters smaller than a tile).
    max_pad = max(spec.tile_size_px - 1, spec.stride_px)
    for window in iter_tile_windows(height, width, spec):
        assert (window.width, window.height) == (spec.tile_size_px, spec.tile_size_px)
        assert window.row_off >= 0 and window.col_off >= 0
        assert window.row_off < height and window.col_off < width  # every tile sees some raster
        assert window.row_off + window.height <= height + max_pad
        assert window.col_off + window.width <= width + max_pad


@settings(max_examples=150, deadline=None)
@given(raster_and_spec())
def test_core_windows_partition_the_raster_exactly_once(case: tuple[int, int, TilingSpec]) -> None:
    height, width, spec = case
    hits = np.zeros((height, width), dtype=np.int32)
    for window in iter_tile_windows(height, width, spec):
        core = core_window(window, height, width, spec)
        assert core.width > 0 and core.height > 0
        r, c = int(core.row_off), int(core.col_off)
        assert r + core.height <= height and c + core.width <= width
        # The core lies inside its tile.
        assert window.row_off <= r and r + core.height <= window.row_off + window.height
        assert window.col_off <= c and c + core.width <= window.col_off + window.width
        hits[r : r + core.height, c : c + core.width] += 1
    np.testing.assert_array_equal(hits, np.ones_like(hits))


@settings(max_examples=100, deadline=None)
@given(raster_and_spec())
def test_neighbouring_tiles_overlap_by_exactly_the_overlap(case: tuple[int, int, TilingSpec]) -> None:
    height, _, spec = case
    offsets = axis_offsets(height, spec)
    for first, second in itertools.pairwise(offsets):
        assert first + spec.tile_size_px - second == spec.overlap_px


def test_raster_smaller_than_a_tile_gets_one_padded_tile() -> None:
    windows = list(iter_tile_windows(5, 7, TilingSpec(16, 4)))
    assert len(windows) == 1
    assert (windows[0].row_off, windows[0].col_off, windows[0].height, windows[0].width) == (0, 0, 16, 16)


def test_tile_count_matches_hand_computed_grid() -> None:
    # 100 px with tile 32 / overlap 8 (stride 24): origins 0, 24, 48, 72 (72 + 32 = 104 >= 100).
    spec = TilingSpec(32, 8)
    assert axis_offsets(100, spec) == [0, 24, 48, 72]
    assert axis_offsets(32, spec) == [0]
    assert axis_offsets(33, spec) == [0, 24]
    assert tile_grid_shape(100, 33, spec) == (4, 2)
    assert tile_count(100, 33, spec) == 8


def test_tile_rows_group_windows_by_row_in_raster_order() -> None:
    spec = TilingSpec(10, 2)
    rows = list(iter_tile_rows(25, 18, spec))
    assert [[(w.row_off, w.col_off) for w in row] for row in rows] == [
        [(0, 0), (0, 8)],
        [(8, 0), (8, 8)],
        [(16, 0), (16, 8)],
    ]
    assert [w for row in rows for w in row] == list(iter_tile_windows(25, 18, spec))


def test_stride_and_margins_split_the_overlap() -> None:
    spec = TilingSpec(64, 13)
    assert spec.stride_px == 51
    assert spec.margin_start_px + spec.margin_end_px == 13


@pytest.mark.parametrize(
    ("tile", "overlap", "fragment"),
    [(0, 0, "positive"), (-4, 0, "positive"), (16, -1, ">= 0"), (16, 16, "smaller than the tile size")],
)
def test_invalid_specs_raise_with_a_fix(tile: int, overlap: int, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        TilingSpec(tile, overlap)


def test_empty_raster_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        list(iter_tile_windows(0, 10, TilingSpec(8, 2)))


def test_anchored_grid_starts_on_the_crs_lattice_of_the_stride() -> None:
    from affine import Affine
    from rasterio.transform import from_origin

    from engine.inference.tiling import anchored_grid_start

    spec = TilingSpec(32, 12)  # stride 20
    # First column 500003 px and first row 2799997 px from the CRS origin (1 m pixels, north up).
    start = anchored_grid_start(from_origin(500003.0, 2799997.0, 1.0, 1.0), spec)
    assert start == ((-2799997) % 20, 500003 % 20) == (3, 3)
    # Cut 7 px further in: the grid starts 7 px later, so its tiles fall on the same ground.
    later = anchored_grid_start(from_origin(500010.0, 2799990.0, 1.0, 1.0), spec)
    assert later == (10, 10) and (start[0] + 7) % 20 == later[0]
    assert anchored_grid_start(Affine.identity(), spec) == (0, 0)  # no georeference: the raster's own corner
    assert anchored_grid_start(Affine(1.0, 0.2, 0.0, 0.0, -1.0, 0.0), spec) == (0, 0)  # rotated grid


def test_grid_reaches_half_the_overlap_beyond_the_raster_and_anchored_grids_keep_that_context() -> None:
    from affine import Affine
    from rasterio.transform import from_origin

    from engine.inference.tiling import edge_context_px, grid_margins

    spec = TilingSpec(32, 12)  # stride 20, context 6 px
    assert edge_context_px(spec) == 6
    assert grid_margins(spec, "raster") == (6, 6, 6, 6)
    # Lattice start (3, 3) leaves less than 6 px of context: the grid starts one stride earlier.
    assert grid_margins(spec, "anchored", from_origin(500003.0, 2799997.0, 1.0, 1.0)) == (23, 23, 6, 6)
    assert grid_margins(spec, "anchored", from_origin(500010.0, 2799990.0, 1.0, 1.0)) == (10, 10, 6, 6)
    assert grid_margins(spec, "anchored", Affine.identity()) == (6, 6, 6, 6)  # no georeference: raster grid
    assert grid_margins(spec, "anchored", None) == (6, 6, 6, 6)


def test_runs_mirror_without_a_limit_unless_the_policy_says_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.inference import tiling

    spec = tiling.TilingSpec(64, 16)
    assert tiling.MIRROR_DEPTH == "unlimited" and tiling.mirror_depth_px(spec) is None
    monkeypatch.setattr(tiling, "MIRROR_DEPTH", "grid")
    assert tiling.mirror_depth_px(spec) == tiling.edge_context_px(spec) == 8

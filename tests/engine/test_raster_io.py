"""RasterSource: band matching, value scaling, validity (nodata, masks, alpha, extent, mask), GSD resampling."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from engine.errors import InvalidInputError, InvalidRasterError
from engine.raster.reader import RasterSource
from tests.engine.tiny_assets import ORIGIN, MakeGeoTiff, make_tiny_card

MEAN = np.array([0.485, 0.456, 0.406])[:, None, None]
STD = np.array([0.229, 0.224, 0.225])[:, None, None]


def expected_rgb(raw: np.ndarray) -> np.ndarray:
    """The card's normalisation computed independently: (x / 255 - mean) / std."""
    return (raw.astype(np.float64) / 255.0 - MEAN) / STD


def random_bands(count: int, height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 255, size=(count, height, width), dtype=np.uint8)


def full_window(source: RasterSource) -> Window:
    return Window(0, 0, source.width, source.height)


# --- band matching -----------------------------------------------------------------------------------------


def test_rgb_raster_feeds_red_green_blue_normalised(make_geotiff: MakeGeoTiff) -> None:
    raw = random_bands(3)
    path = make_geotiff(raw, photometric="RGB")
    with RasterSource.open(path, make_tiny_card()) as source:
        tile, valid = source.read_tile(full_window(source))
    assert source.band_indexes == (1, 2, 3)
    assert tile.dtype == np.float32 and tile.shape == (3, 24, 32)
    np.testing.assert_allclose(tile, expected_rgb(raw), rtol=0, atol=1e-5)
    assert valid.all()


def test_bgra_raster_feeds_rgb_in_card_order_and_alpha_only_masks(make_geotiff: MakeGeoTiff) -> None:
    bgr = random_bands(3, seed=1)
    alpha = np.full((24, 32), 255, dtype=np.uint8)
    alpha[:, :5] = 0
    path = make_geotiff(np.concatenate([bgr, alpha[None]]), colorinterp=["blue", "green", "red", "alpha"])
    with RasterSource.open(path, make_tiny_card()) as source:
        tile, valid = source.read_tile(full_window(source))
    assert source.band_indexes == (3, 2, 1)
    rgb = bgr[::-1]
    np.testing.assert_allclose(tile[:, :, 5:], expected_rgb(rgb)[:, :, 5:], atol=1e-5)
    np.testing.assert_array_equal(valid, alpha > 0)
    assert np.all(tile[:, :, :5] == 0.0)  # no data under alpha 0: the band mean, i.e. 0 after normalisation


def test_explicit_bands_override_colour_interpretation(make_geotiff: MakeGeoTiff) -> None:
    raw = random_bands(3, seed=2)
    path = make_geotiff(raw, photometric="RGB")
    with RasterSource.open(path, make_tiny_card(), bands=(3, 1, 2)) as source:
        tile, _ = source.read_tile(full_window(source))
    assert source.band_indexes == (3, 1, 2)
    np.testing.assert_allclose(tile, expected_rgb(raw[[2, 0, 1]]), atol=1e-5)


def test_band_index_out_of_range_names_band_count_and_fix(make_geotiff: MakeGeoTiff) -> None:
    path = make_geotiff(random_bands(3), photometric="RGB")
    with pytest.raises(InvalidRasterError, match=r"3 bands \(red, green, blue\).*with BANDS"):
        RasterSource.open(path, make_tiny_card(), bands=(1, 2, 5))


def test_wrong_number_of_explicit_bands_raises(make_geotiff: MakeGeoTiff) -> None:
    path = make_geotiff(random_bands(3), photometric="RGB")
    with pytest.raises(InvalidRasterError, match=r"2 bands \[1, 2\] given but the model expects 3.*BANDS"):
        RasterSource.open(path, make_tiny_card(), bands=(1, 2))


def test_single_band_raster_for_rgb_model_explains_the_fix(make_geotiff: MakeGeoTiff) -> None:
    path = make_geotiff(random_bands(1))
    with pytest.raises(InvalidRasterError, match=r"1 band \(gray\).*expects 3 bands \(red, green, blue\).*with BANDS"):
        RasterSource.open(path, make_tiny_card())


def test_extra_card_band_takes_the_remaining_band_and_descriptions_match(make_geotiff: MakeGeoTiff) -> None:
    card = make_tiny_card(input_bands=("nir", "red", "green", "blue"), norm_mean=(0.0,) * 4, norm_std=(1.0,) * 4)
    raw = random_bands(4, seed=3)
    # Band 4 is undefined: the one card band left unmatched ("nir") takes it.
    path = make_geotiff(raw, colorinterp=["red", "green", "blue", "undefined"])
    with RasterSource.open(path, card) as source:
        assert source.band_indexes == (4, 1, 2, 3)
    described = make_geotiff(raw, name="described.tif", colorinterp=["undefined"] * 4,
                             descriptions=["Blue", "Green", "Red", "NIR"])  # fmt: skip
    with RasterSource.open(described, card) as source:
        tile, _ = source.read_tile(full_window(source))
        assert source.band_indexes == (4, 3, 2, 1)
    np.testing.assert_allclose(tile, raw[[3, 2, 1, 0]] / 255.0, atol=1e-6)


def test_ambiguous_leftover_bands_ask_for_explicit_bands(make_geotiff: MakeGeoTiff) -> None:
    card = make_tiny_card(input_bands=("red", "green", "blue", "nir"), norm_mean=(0.0,) * 4, norm_std=(1.0,) * 4)
    path = make_geotiff(random_bands(5), colorinterp=["red", "green", "blue", "undefined", "undefined"])
    with pytest.raises(InvalidRasterError, match=r"5 bands.*BANDS 1,2,3,4"):
        RasterSource.open(path, card)


# --- values ----------------------------------------------------------------------------------------------


def test_16bit_values_are_scaled_by_the_card_range(make_geotiff: MakeGeoTiff) -> None:
    raw = np.random.default_rng(4).integers(0, 10000, size=(3, 16, 20), dtype=np.uint16)
    card = make_tiny_card(input_dtype="uint16", input_value_range=(0.0, 10000.0), norm_mean=(0.5,) * 3,
                          norm_std=(0.25,) * 3)  # fmt: skip
    with RasterSource.open(make_geotiff(raw, photometric="RGB"), card) as source:
        tile, valid = source.read_tile(full_window(source))
    np.testing.assert_allclose(tile, (raw / 10000.0 - 0.5) / 0.25, atol=1e-5)
    assert valid.all()


def test_float_input_with_nan_marks_pixels_invalid(make_geotiff: MakeGeoTiff) -> None:
    raw = np.random.default_rng(5).uniform(0.0, 1.0, size=(3, 16, 20)).astype(np.float32)
    raw[1, 3, 4] = np.nan
    card = make_tiny_card(input_dtype="float32", input_value_range=(0.0, 1.0), norm_mean=(0.0,) * 3,
                          norm_std=(1.0,) * 3)  # fmt: skip
    with RasterSource.open(make_geotiff(raw, photometric="RGB"), card) as source:
        tile, valid = source.read_tile(full_window(source))
    assert not valid[3, 4] and valid.sum() == 16 * 20 - 1
    assert np.isfinite(tile).all() and np.all(tile[:, 3, 4] == 0)
    np.testing.assert_allclose(tile[:, valid], raw[:, valid], atol=1e-6)


# --- validity -------------------------------------------------------------------------------------------


def test_nodata_pixel_is_invalid_only_where_every_band_is_nodata(make_geotiff: MakeGeoTiff) -> None:
    raw = random_bands(3, seed=6)
    raw[:, 2, 3] = 0  # all bands nodata
    raw[0, 5, 6] = 0  # one band only: still a (dark red-free) pixel
    with RasterSource.open(make_geotiff(raw, nodata=0, photometric="RGB"), make_tiny_card()) as source:
        _, valid = source.read_tile(full_window(source))
    expected = np.ones((24, 32), dtype=bool)
    expected[2, 3] = False
    np.testing.assert_array_equal(valid, expected)


def test_internal_mask_marks_pixels_invalid(make_geotiff: MakeGeoTiff) -> None:
    mask = np.ones((24, 32), dtype=bool)
    mask[10:, 20:] = False
    path = make_geotiff(random_bands(3, seed=7), internal_mask=mask, photometric="RGB")
    with RasterSource.open(path, make_tiny_card()) as source:
        _, valid = source.read_tile(full_window(source))
    np.testing.assert_array_equal(valid, mask)


def test_window_past_the_edges_is_mirrored_and_invalid_outside(make_geotiff: MakeGeoTiff) -> None:
    raw = random_bands(3, seed=8)
    with RasterSource.open(make_geotiff(raw, photometric="RGB"), make_tiny_card()) as source:
        tile, valid = source.read_tile(Window(-4, 20, 16, 16))
    assert tile.shape == (3, 16, 16) and valid.shape == (16, 16)
    expected_valid = np.zeros((16, 16), dtype=bool)
    expected_valid[0:4, 4:16] = True
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_allclose(tile[:, 0:4, 4:16], expected_rgb(raw[:, 20:24, 0:12]), atol=1e-5)
    # Outside the raster its own pixels are mirrored about the edge pixels, as numpy.pad(mode="reflect") of the whole
    # raster would (rows 24..35 mirror rows 22..11, columns -4..-1 mirror 4..1): a model sees a continuation of the
    # image rather than a flat block, and the same continuation whichever tile reaches past the edge.
    rows = [20, 21, 22, 23, *range(22, 10, -1)]
    cols = [4, 3, 2, 1, *range(12)]
    np.testing.assert_allclose(tile, expected_rgb(raw[:, rows][:, :, cols]), atol=1e-5)


def test_mean_padding_fills_outside_with_the_band_mean(make_geotiff: MakeGeoTiff, monkeypatch: Any) -> None:
    from engine.raster import reader

    monkeypatch.setattr(reader, "EDGE_PADDING", "mean")
    raw = random_bands(3, seed=8)
    with RasterSource.open(make_geotiff(raw, photometric="RGB"), make_tiny_card()) as source:
        tile, valid = source.read_tile(Window(-4, 20, 16, 16))
    assert np.all(tile[:, ~valid] == 0.0)


def test_invalid_pixels_inside_are_the_band_mean_also_where_mirrored(make_geotiff: MakeGeoTiff) -> None:
    raw = random_bands(3, seed=12)
    raw[:, :, 30:] = 0  # the last two columns are nodata
    with RasterSource.open(make_geotiff(raw, nodata=0, photometric="RGB"), make_tiny_card()) as source:
        tile, valid = source.read_tile(Window(24, 0, 12, 24))
    assert not valid[:, 6:].any() and valid[:, :6].all()
    assert np.all(tile[:, :, 6:9] == 0.0)  # nodata columns 30, 31 and column 32, their mirror image of 30
    assert np.all(tile[:, :, :6] != 0.0)
    np.testing.assert_allclose(tile[:, :, 9:12], tile[:, :, [5, 4, 3]])  # columns 33..35 mirror 29..27


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(col=st.integers(-40, 40), row=st.integers(-30, 30), width=st.integers(1, 40), height=st.integers(1, 40))
def test_any_window_returns_its_size_and_valid_exactly_inside(
    make_geotiff: MakeGeoTiff, col: int, row: int, width: int, height: int
) -> None:
    path = make_geotiff(random_bands(3, seed=9), name="prop.tif", photometric="RGB")
    with RasterSource.open(path, make_tiny_card()) as source:
        tile, valid = source.read_tile(Window(col, row, width, height))
    rows = np.arange(row, row + height)[:, None]
    cols = np.arange(col, col + width)[None, :]
    inside = (rows >= 0) & (rows < 24) & (cols >= 0) & (cols < 32)
    assert tile.shape == (3, height, width)
    np.testing.assert_array_equal(valid, inside)


def pixel_centres(height: int, width: int, res: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    x = ORIGIN[0] + (np.arange(width) + 0.5) * res
    y = ORIGIN[1] - (np.arange(height) + 0.5) * res
    return np.broadcast_to(x[None, :], (height, width)), np.broadcast_to(y[:, None], (height, width))


def test_extent_keeps_only_pixels_with_centres_inside(make_geotiff: MakeGeoTiff) -> None:
    x0, y0 = ORIGIN
    extent = (x0 + 2.2, y0 - 9.0, x0 + 11.0, y0 - 1.1)  # metres in UTM 40N
    with RasterSource.open(make_geotiff(random_bands(3), photometric="RGB"), make_tiny_card(), extent=extent) as src:
        _, valid = src.read_tile(Window(0, 0, 32, 24))
        _, shifted = src.read_tile(Window(16, 8, 16, 16))
    x, y = pixel_centres(24, 32)
    expected = (x > extent[0]) & (x < extent[2]) & (y > extent[1]) & (y < extent[3])
    np.testing.assert_array_equal(valid, expected)
    np.testing.assert_array_equal(shifted, expected[8:24, 16:32])


def test_mask_polygons_keep_only_pixels_inside_any_of_them(make_geotiff: MakeGeoTiff) -> None:
    x0, y0 = ORIGIN

    def rect(xmin: float, ymin: float, xmax: float, ymax: float) -> list[list[tuple[float, float]]]:
        return [[(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)]]

    a = (x0 + 1.1, y0 - 5.1, x0 + 4.9, y0 - 0.9)
    b = (x0 + 10.1, y0 - 11.1, x0 + 14.9, y0 - 6.1)
    geometries = [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": rect(*a)}},
        {"type": "MultiPolygon", "coordinates": [rect(*b)]},
    ]
    path = make_geotiff(random_bands(3), photometric="RGB")
    with RasterSource.open(path, make_tiny_card(), mask_geometries=geometries) as source:
        _, valid = source.read_tile(Window(0, 0, 32, 24))
    x, y = pixel_centres(24, 32)
    expected = np.zeros((24, 32), dtype=bool)
    for xmin, ymin, xmax, ymax in (a, b):
        expected |= (x > xmin) & (x < xmax) & (y > ymin) & (y < ymax)
    np.testing.assert_array_equal(valid, expected)


def test_extent_outside_the_raster_is_rejected(make_geotiff: MakeGeoTiff) -> None:
    path = make_geotiff(random_bands(3), photometric="RGB")
    with pytest.raises(InvalidInputError, match=r"does not overlap the raster.*CRS"):
        RasterSource.open(path, make_tiny_card(), extent=(0.0, 0.0, 10.0, 10.0))
    with pytest.raises(InvalidInputError, match="xmin < xmax"):
        RasterSource.open(path, make_tiny_card(), extent=(ORIGIN[0] + 5, ORIGIN[1] - 5, ORIGIN[0], ORIGIN[1]))


def test_non_polygon_mask_is_rejected(make_geotiff: MakeGeoTiff) -> None:
    path = make_geotiff(random_bands(3), photometric="RGB")
    with pytest.raises(InvalidInputError, match="polygons, got a LineString"):
        RasterSource.open(path, make_tiny_card(), mask_geometries=[{"type": "LineString", "coordinates": [[0, 0]]}])


# --- files and georeference ------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidRasterError, match=r"missing\.tif' does not exist; check the path"):
        RasterSource.open(tmp_path / "missing.tif", make_tiny_card())


def test_corrupt_file_says_what_to_give(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.tif"
    path.write_bytes(b"II*\x00" + b"\x13" * 64)
    with pytest.raises(InvalidRasterError, match=r"Cannot open .*corrupt\.tif.* as a raster"):
        RasterSource.open(path, make_tiny_card())


def test_raster_without_georeference_runs_on_its_pixel_grid_with_a_warning(
    make_geotiff: MakeGeoTiff, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_geotiff(random_bands(3), georeferenced=False, photometric="RGB")
    with caplog.at_level(logging.WARNING), RasterSource.open(path, make_tiny_card(gsd_m=2.0)) as source:
        assert not source.georeferenced and not source.resampled
        assert (source.height, source.width) == (24, 32)
        _, valid = source.read_tile(full_window(source))
    assert valid.all()
    assert "no georeference" in caplog.text


# --- ground sampling distance ----------------------------------------------------------------------------


def test_finer_raster_is_read_on_the_model_grid(make_geotiff: MakeGeoTiff) -> None:
    # 0.5 m raster made of 2x2 constant blocks; a 1 m model sees each block as one pixel.
    blocks = np.random.default_rng(10).integers(0, 255, size=(3, 12, 16), dtype=np.uint8)
    raw = blocks.repeat(2, axis=1).repeat(2, axis=2)
    path = make_geotiff(raw, res_m=0.5, photometric="RGB")
    with RasterSource.open(path, make_tiny_card(gsd_m=1.0)) as source:
        assert source.resampled
        assert (source.height, source.width) == (12, 16)
        assert (source.input_height, source.input_width) == (24, 32)
        assert source.processing_transform.a == pytest.approx(1.0)
        assert source.processing_transform.c == source.transform.c and source.processing_transform.f == ORIGIN[1]
        tile, valid = source.read_tile(full_window(source))
    np.testing.assert_allclose(tile, expected_rgb(blocks), atol=1e-4)
    assert valid.all()


def test_resampled_grid_keeps_nodata_invalid(make_geotiff: MakeGeoTiff) -> None:
    raw = random_bands(3, seed=11)
    raw[:, :8, :8] = 0
    path = make_geotiff(raw, nodata=0, res_m=0.5, photometric="RGB")
    with RasterSource.open(path, make_tiny_card(gsd_m=1.0)) as source:
        _, valid = source.read_tile(full_window(source))
    assert not valid[:4, :4].any() and valid[4:, :].all() and valid[:, 4:].all()


@pytest.mark.parametrize(
    ("gsd_m", "option", "crs", "resampled"),
    [
        (0.51, True, "EPSG:32640", False),  # within 5 %
        (1.0, False, "EPSG:32640", False),  # turned off
        (1.0, True, "EPSG:4326", False),  # degrees: not comparable with metres
        (None, True, "EPSG:32640", False),  # card does not know its GSD
        (0.25, True, "EPSG:32640", True),
    ],
)
def test_resampling_only_when_both_gsds_are_known_and_differ(
    make_geotiff: MakeGeoTiff, gsd_m: float | None, option: bool, crs: str, resampled: bool
) -> None:
    path = make_geotiff(random_bands(3), crs=crs, res_m=0.5, photometric="RGB")
    with RasterSource.open(path, make_tiny_card(gsd_m=gsd_m), resample_to_model_gsd=option) as source:
        assert source.resampled is resampled
        expected = (48, 64) if resampled else (24, 32)
        assert (source.height, source.width) == expected
        tile, valid = source.read_tile(full_window(source))
    assert tile.shape == (3, *expected) and valid.all()


def test_resampled_grid_lies_on_the_model_gsd_lattice(make_geotiff: MakeGeoTiff) -> None:
    from rasterio.transform import from_origin

    # 0.5 m pixels, 31 x 41, the corner 0.25 m off the 1 m lattice: cells of exactly 1 m from a multiple of 1 m,
    # covering the raster (by less than a cell on each side).
    raw = np.random.default_rng(13).integers(0, 255, size=(3, 31, 41), dtype=np.uint8)
    transform = from_origin(ORIGIN[0] + 0.25, ORIGIN[1] - 0.25, 0.5, 0.5)
    path = make_geotiff(raw, transform=transform, photometric="RGB")
    with RasterSource.open(path, make_tiny_card(gsd_m=1.0)) as source:
        grid = source.processing_transform
        assert (grid.a, grid.e) == (1.0, -1.0)
        assert (grid.c, grid.f) == (ORIGIN[0], ORIGIN[1])  # 500000.25 and 2799999.75 rounded outwards
        # x: 500000.25 .. 500020.75 -> 21 cells; y: 2799999.75 .. 2799984.25 -> 16 cells.
        assert (source.width, source.height) == (21, 16)


@settings(max_examples=60, deadline=None)
@given(start=st.integers(-70, 70), count=st.integers(1, 60), length=st.integers(1, 20))
def test_mirror_indices_are_numpy_reflect_padding_of_the_whole_axis(start: int, count: int, length: int) -> None:
    from engine.raster.reader import mirror_indices

    pad = 200
    padded = np.pad(np.arange(length), pad, mode="reflect") if length > 1 else np.zeros(length + 2 * pad, int)
    np.testing.assert_array_equal(mirror_indices(start, count, length), padded[pad + start : pad + start + count])


def test_mirroring_stops_at_the_mirror_depth_and_band_means_follow(make_geotiff: MakeGeoTiff) -> None:
    raw = random_bands(3, seed=14)
    path = make_geotiff(raw, photometric="RGB")
    with RasterSource.open(path, make_tiny_card(), mirror_depth_px=3) as source:
        tile, valid = source.read_tile(Window(26, 18, 12, 12))  # 6 px past the right and bottom edges
    expected = expected_rgb(
        raw[:, [*range(18, 24), 22, 21, 20, 19, 18, 17]][:, :, [*range(26, 32), 30, 29, 28, 27, 26, 25]]
    )
    near = np.zeros((12, 12), dtype=bool)
    near[:9, :9] = True  # inside, or at most 3 px outside in both directions
    np.testing.assert_allclose(tile[:, near], expected[:, near], atol=1e-5)
    assert np.all(tile[:, ~near] == 0.0)  # further out: the band mean
    assert valid[:6, :6].all() and not valid[6:, :].any() and not valid[:, 6:].any()


def test_in_memory_mirroring_stops_at_the_mirror_depth() -> None:
    from engine.inference.in_memory import ArrayTileSource

    image = np.arange(1, 1 + 2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)
    tile, _ = ArrayTileSource(image, mirror_depth_px=1).read_tile(Window(-3, 0, 6, 5))  # columns -3..2
    np.testing.assert_array_equal(tile[:, :, 2:], image[:, :, [1, 0, 1, 2]])  # column -1 mirrors column 1
    assert np.all(tile[:, :, :2] == 0.0)  # columns -3, -2: beyond the depth

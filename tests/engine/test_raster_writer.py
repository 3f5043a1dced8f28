"""SegmentationWriter: class raster and heatmaps read back, atomic commit/abort, path checks, grid round trips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.errors import OutputPathError
from engine.raster.argmax import argmax_classes
from engine.raster.heatmaps import HEATMAP_SCALE, heatmap_encoding, quantize_probabilities
from engine.raster.reader import RasterSource
from engine.raster.writer import SegmentationWriter
from tests.engine.tiny_assets import TINY_CLASSES, TINY_COLOURS, MakeGeoTiff, make_tiny_card

K = len(TINY_CLASSES)


def label_pattern(height: int, width: int) -> np.ndarray:
    """A known class map: diagonal stripes of classes 0, 1, 2."""
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows // 3 + cols // 5) % K).astype(np.uint8)


def probs_for(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Random probabilities whose largest class is ``labels`` (confident: 0.6 or more on it)."""
    rng = np.random.default_rng(seed)
    rest = rng.dirichlet(np.ones(K), size=labels.shape).transpose(2, 0, 1) * 0.4
    one_hot = (np.arange(K)[:, None, None] == labels[None]).astype(np.float64)
    return (0.6 * one_hot + rest).astype(np.float32)


def rgb_raster(make_geotiff: MakeGeoTiff, height: int = 40, width: int = 50, **kwargs: object) -> Path:
    data = np.random.default_rng(1).integers(1, 255, size=(3, height, width), dtype=np.uint8)
    return make_geotiff(data, photometric="RGB", **kwargs)


def write_all(writer: SegmentationWriter, probs: np.ndarray, valid: np.ndarray, strip: int) -> None:
    for row in range(0, probs.shape[1], strip):
        writer.write_rows(row, probs[:, row : row + strip], valid[row : row + strip])


def category_names(path: Path) -> list[str]:
    from osgeo import gdal  # independent reader: the system GDAL, not rasterio's

    dataset = gdal.Open(str(path))
    dataset.GetProjectionRef()  # GDAL 3.6 GeoTIFF loads the PAM sidecar lazily; category names need it loaded
    names = dataset.GetRasterBand(1).GetCategoryNames()
    dataset = None
    return list(names or [])


# --- contents -------------------------------------------------------------------------------------------


def test_class_raster_reads_back_with_classes_nodata_colours_names_and_tags(
    make_geotiff: MakeGeoTiff, tmp_path: Path
) -> None:
    raster = rgb_raster(make_geotiff, height=300, width=70)  # > one 256-row block row
    labels = label_pattern(300, 70)
    valid = np.ones((300, 70), dtype=bool)
    valid[100:120, 10:30] = False
    out = tmp_path / "classes.tif"
    card = make_tiny_card()
    with (
        RasterSource.open(raster, card) as source,
        SegmentationWriter(source, out, None, card, {"BICORSEG_MODEL": "tiny", "BICORSEG_TILE_SIZE": "32"}) as writer,
    ):
        write_all(writer, probs_for(labels), valid, strip=23)  # strips straddle the block rows
        writer.commit()
    with rasterio.open(raster) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        assert dst.count == 1 and dst.dtypes[0] == "uint8" and dst.nodata == 255
        assert dst.block_shapes[0] == (256, 256) and dst.compression is not None
        assert dst.compression.name.lower() == "deflate"
        got = dst.read(1)
        colours = dst.colormap(1)
        tags = dst.tags()
    np.testing.assert_array_equal(got, np.where(valid, labels, 255))
    for index, hex_colour in enumerate(TINY_COLOURS):
        assert colours[index][:3] == tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    assert category_names(out) == list(TINY_CLASSES)
    assert tags["BICORSEG_MODEL"] == "tiny" and tags["BICORSEG_TILE_SIZE"] == "32"
    expected_counts = tuple(int(((labels == k) & valid).sum()) for k in range(K))
    assert writer.class_pixel_counts == expected_counts
    assert writer.valid_pixel_count == int(valid.sum())


def test_heatmaps_are_uint16_scaled_and_sum_to_one_on_valid_pixels(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff)
    probs = probs_for(label_pattern(40, 50), seed=3)
    valid = np.ones((40, 50), dtype=bool)
    valid[:, :7] = False
    card = make_tiny_card()
    heat_path = tmp_path / "heat.tif"
    with (
        RasterSource.open(raster, card) as source,
        SegmentationWriter(source, tmp_path / "c.tif", heat_path, card, {"BICORSEG_MODEL": "tiny"}) as writer,
    ):
        write_all(writer, probs, valid, strip=40)
        writer.commit()
    with rasterio.open(heat_path) as dst:
        assert dst.count == K and set(dst.dtypes) == {"uint16"} and dst.nodata == 65535
        assert dst.descriptions == TINY_CLASSES
        assert dst.scales == (1e-4,) * K and dst.offsets == (0.0,) * K
        assert dst.tags()["BICORSEG_MODEL"] == "tiny"
        assert dst.block_shapes[0] == (256, 256)
        stored = dst.read().astype(np.int64)
    assert np.all(stored[:, ~valid] == 65535)
    assert np.all(stored[:, valid].sum(axis=0) == HEATMAP_SCALE)
    assert np.abs(stored[:, valid] - probs[:, valid] * HEATMAP_SCALE).max() <= 1.0


def test_heatmaps_read_through_gdal_scale_are_probabilities(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    from osgeo import gdal

    raster = rgb_raster(make_geotiff, height=20, width=20)
    probs = probs_for(label_pattern(20, 20), seed=4)
    card = make_tiny_card()
    with (
        RasterSource.open(raster, card) as source,
        SegmentationWriter(source, tmp_path / "c.tif", tmp_path / "h.tif", card, {}) as writer,
    ):
        writer.write_rows(0, probs, np.ones((20, 20), dtype=bool))
        writer.commit()
    dataset = gdal.Open(str(tmp_path / "h.tif"))
    bands = [dataset.GetRasterBand(b + 1) for b in range(K)]
    values = np.stack([b.ReadAsArray() * b.GetScale() + b.GetOffset() for b in bands])
    dataset = None
    np.testing.assert_allclose(values.sum(axis=0), 1.0, atol=1e-9)
    np.testing.assert_allclose(values, probs, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 40)), elements=st.floats(0, 1, width=32)))
def test_quantised_heatmaps_sum_exactly_and_stay_within_one_unit(scores: np.ndarray) -> None:
    total = scores.sum(axis=0, dtype=np.float64)
    quantised = quantize_probabilities(scores, np.ones(scores.shape[1], dtype=bool)).astype(np.int64)
    assert np.all(quantised.sum(axis=0) == HEATMAP_SCALE)
    nonzero = total > 0
    expected = scores[:, nonzero] / total[nonzero] * HEATMAP_SCALE
    assert np.all(np.abs(quantised[:, nonzero] - expected) < 1.0 + 1e-6)


def test_cog_output_keeps_colours_names_scales_and_tags(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff, height=600, width=520)  # big enough for one overview level
    labels = label_pattern(600, 520)
    card = make_tiny_card()
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    with (
        RasterSource.open(raster, card) as source,
        SegmentationWriter(source, out, heat, card, {"BICORSEG_MODEL": "tiny"}, cog=True) as writer,
    ):
        write_all(writer, probs_for(labels, seed=5), np.ones((600, 520), dtype=bool), strip=200)
        writer.commit()
    with rasterio.open(out) as dst:
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert dst.overviews(1) and dst.block_shapes[0] == (256, 256)
        assert dst.colormap(1)[1][:3] == (0, 160, 0) and dst.tags()["BICORSEG_MODEL"] == "tiny"
        np.testing.assert_array_equal(dst.read(1), labels)
    with rasterio.open(heat) as dst:
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert dst.descriptions == TINY_CLASSES and dst.scales == (1e-4,) * K and dst.nodata == 65535
    assert category_names(out) == list(TINY_CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "c.tif.aux.xml", "h.tif", "raster.tif"]


# --- resampled grids ------------------------------------------------------------------------------------


def resampled_run(
    make_geotiff: MakeGeoTiff, tmp_path: Path, heatmaps: bool, name: str = "c"
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int, Path]:
    """A 0.5 m input with a nodata corner, a 1 m model: (classes, stored heatmaps, grid labels, count, raster)."""
    data = np.random.default_rng(2).integers(1, 255, size=(3, 40, 60), dtype=np.uint8)
    data[:, 30:, 50:] = 0  # a nodata corner on the input grid
    raster = make_geotiff(data, nodata=0, res_m=0.5, photometric="RGB")
    card = make_tiny_card(gsd_m=1.0)
    out, heat = tmp_path / f"{name}.tif", (tmp_path / f"{name}_h.tif" if heatmaps else None)
    with RasterSource.open(raster, card) as source:
        assert (source.height, source.width) == (20, 30)
        grid_labels = label_pattern(20, 30)
        with SegmentationWriter(source, out, heat, card, {}) as writer:
            write_all(writer, probs_for(grid_labels, seed=6), np.ones((20, 30), dtype=bool), strip=7)
            writer.commit()
    with rasterio.open(raster) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        classes = dst.read(1)
    stored = None
    if heat is not None:
        with rasterio.open(raster) as src, rasterio.open(heat) as hm:
            assert (hm.crs, hm.transform, hm.shape) == (src.crs, src.transform, src.shape)
            stored = hm.read().astype(np.int64)
    return classes, stored, grid_labels, writer.valid_pixel_count, raster


def test_outputs_of_a_resampled_run_are_on_the_input_grid(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    classes, stored, grid_labels, valid_count, _ = resampled_run(make_geotiff, tmp_path, heatmaps=True)
    assert stored is not None
    nodata_corner = np.zeros((40, 60), dtype=bool)
    nodata_corner[30:, 50:] = True
    # Each 1 m processing pixel covers 2 x 2 input pixels. Where its 3 x 3 neighbourhood holds one class, resampling
    # the probabilities cannot change the class (every bilinear weight falls on that class's pixels).
    padded = np.pad(grid_labels, 1, mode="edge")
    uniform = np.ones_like(grid_labels, dtype=bool)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            uniform &= padded[dr : dr + 20, dc : dc + 30] == grid_labels
    inside = uniform.repeat(2, axis=0).repeat(2, axis=1) & ~nodata_corner
    expected = grid_labels.repeat(2, axis=0).repeat(2, axis=1)
    assert inside.sum() > 600
    np.testing.assert_array_equal(classes[inside], expected[inside])
    assert np.all(classes[nodata_corner] == 255)
    valid = classes != 255
    np.testing.assert_array_equal(valid, ~nodata_corner)
    assert np.all(stored[:, valid].sum(axis=0) == HEATMAP_SCALE)
    assert np.all(stored[:, ~valid] == 65535)
    assert valid_count == int(valid.sum())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "c.tif.aux.xml", "c_h.tif", "raster.tif"]


def test_resampled_classes_are_the_argmax_of_the_resampled_heatmaps(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    classes, stored, _, _, _ = resampled_run(make_geotiff, tmp_path, heatmaps=True)
    assert stored is not None
    valid = classes != 255
    chosen = np.take_along_axis(stored, np.where(valid, classes, 0)[None].astype(np.int64), axis=0)[0]
    # The class of every valid pixel is a maximum of its stored probabilities (ties: any of the maxima).
    np.testing.assert_array_equal(chosen[valid], stored.max(axis=0)[valid])


def test_resampled_classes_do_not_depend_on_asking_for_heatmaps(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    with_heatmaps, _, _, _, _ = resampled_run(make_geotiff, tmp_path, heatmaps=True, name="a")
    without, stored, _, _, _ = resampled_run(make_geotiff, tmp_path, heatmaps=False, name="b")
    assert stored is None
    np.testing.assert_array_equal(without, with_heatmaps)


def test_raster_without_georeference_gives_outputs_without_georeference(
    make_geotiff: MakeGeoTiff, tmp_path: Path
) -> None:
    raster = rgb_raster(make_geotiff, height=16, width=24, georeferenced=False)
    card = make_tiny_card(gsd_m=1.0)
    out = tmp_path / "c.tif"
    with RasterSource.open(raster, card) as source, SegmentationWriter(source, out, None, card, {}) as writer:
        writer.write_rows(0, probs_for(label_pattern(16, 24)), np.ones((16, 24), dtype=bool))
        writer.commit()
    with rasterio.open(out) as dst:
        assert dst.crs is None and dst.shape == (16, 24)
        np.testing.assert_array_equal(dst.read(1), label_pattern(16, 24))


# --- atomicity and paths --------------------------------------------------------------------------------


def test_abort_leaves_nothing_at_the_output_paths(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff)
    card = make_tiny_card()
    with RasterSource.open(raster, card) as source:
        writer = SegmentationWriter(source, tmp_path / "c.tif", tmp_path / "h.tif", card, {})
        writer.write_rows(0, probs_for(label_pattern(10, 50)), np.ones((10, 50), dtype=bool))
        writer.abort()
        writer.abort()  # twice is fine
    assert [p.name for p in tmp_path.iterdir()] == ["raster.tif"]


def test_exception_inside_the_context_leaves_nothing(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff)
    card = make_tiny_card(gsd_m=1.0)  # resampled: temp files for both grids
    with (
        pytest.raises(RuntimeError, match="boom"),
        RasterSource.open(raster, card) as source,
        SegmentationWriter(source, tmp_path / "c.tif", tmp_path / "h.tif", card, {}) as writer,
    ):
        writer.write_rows(0, probs_for(label_pattern(5, source.width)), np.ones((5, source.width), dtype=bool))
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["raster.tif"]


def test_commit_with_missing_rows_fails_and_leaves_nothing(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff)
    card = make_tiny_card()
    with (
        RasterSource.open(raster, card) as source,
        SegmentationWriter(source, tmp_path / "c.tif", None, card, {}) as writer,
    ):
        writer.write_rows(0, probs_for(label_pattern(10, 50)), np.ones((10, 50), dtype=bool))
        with pytest.raises(ValueError, match="10 of 40 rows"):
            writer.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["raster.tif"]


def test_rows_out_of_order_are_a_caller_error(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff)
    card = make_tiny_card()
    with (
        RasterSource.open(raster, card) as source,
        SegmentationWriter(source, tmp_path / "c.tif", None, card, {}) as writer,
    ):
        with pytest.raises(ValueError, match="expected row 0"):
            writer.write_rows(5, probs_for(label_pattern(5, 50)), np.ones((5, 50), dtype=bool))
        writer.abort()


def test_commit_replaces_an_existing_output_and_its_stale_sidecar(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff, height=8, width=8)
    heat = tmp_path / "h.tif"
    heat.write_bytes(b"old")
    (tmp_path / "h.tif.aux.xml").write_text("<PAMDataset/>")
    card = make_tiny_card()
    with (
        RasterSource.open(raster, card) as source,
        SegmentationWriter(source, tmp_path / "c.tif", heat, card, {}) as writer,
    ):
        writer.write_rows(0, probs_for(label_pattern(8, 8)), np.ones((8, 8), dtype=bool))
        writer.commit()
    assert not (tmp_path / "h.tif.aux.xml").exists()
    with rasterio.open(heat) as dst:
        assert dst.count == K


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("c.png", r"must be a GeoTIFF \(\.tif or \.tiff\).*change its file extension"),
        ("raster.tif/sub/c.tif", "Output folder .*sub' does not exist and cannot be created"),
        ("raster.tif", "is the input raster; choose another output path"),
        (".", "is a folder; give a file path"),
    ],
)
def test_unusable_output_path_is_rejected_before_any_work(
    make_geotiff: MakeGeoTiff, tmp_path: Path, name: str, message: str
) -> None:
    raster = rgb_raster(make_geotiff)
    card = make_tiny_card()
    with RasterSource.open(raster, card) as source, pytest.raises(OutputPathError, match=message):
        SegmentationWriter(source, tmp_path / name, None, card, {})
    assert [p.name for p in tmp_path.iterdir()] == ["raster.tif"]


def test_a_missing_output_folder_is_created(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff)
    card = make_tiny_card()
    out = tmp_path / "new" / "deeper" / "c.tif"
    with RasterSource.open(raster, card) as source, SegmentationWriter(source, out, None, card, {}) as writer:
        write_all(writer, probs_for(label_pattern(40, 50)), np.ones((40, 50), dtype=bool), strip=16)
        writer.commit()
    assert out.is_file()


def test_unwritable_folder_is_rejected_at_construction(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff)
    card = make_tiny_card()
    # /proc refuses new files even for root, where permission bits would not stop anyone.
    target = Path("/proc/bicorseg-classes.tif")
    with RasterSource.open(raster, card) as source, pytest.raises(OutputPathError, match=r"bicorseg-classes\.tif"):
        SegmentationWriter(source, target, None, card, {})
    if os.name == "posix" and os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o500)
        with RasterSource.open(raster, card) as source, pytest.raises(OutputPathError, match="not writable"):
            SegmentationWriter(source, folder / "c.tif", None, card, {})


def test_same_path_for_classes_and_heatmaps_is_rejected(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    raster = rgb_raster(make_geotiff)
    card = make_tiny_card()
    with RasterSource.open(raster, card) as source, pytest.raises(OutputPathError, match="same file"):
        SegmentationWriter(source, tmp_path / "x.tif", tmp_path / "x.tif", card, {})


# --- compact heatmaps and the arg-max ------------------------------------------------------------------------


def write_heatmaps(make_geotiff: MakeGeoTiff, tmp_path: Path, probs: np.ndarray, dtype: str) -> Path:
    raster = rgb_raster(make_geotiff, height=probs.shape[1], width=probs.shape[2])
    card = make_tiny_card()
    heat = tmp_path / f"heat_{dtype}.tif"
    with (
        RasterSource.open(raster, card) as source,
        SegmentationWriter(source, tmp_path / f"c_{dtype}.tif", heat, card, {}, heatmap_dtype=dtype) as writer,
    ):
        write_all(writer, probs, np.ones(probs.shape[1:], dtype=bool), strip=9)
        writer.commit()
    return heat


def test_uint8_heatmaps_read_through_gdal_as_the_same_probabilities(make_geotiff: MakeGeoTiff, tmp_path: Path) -> None:
    from osgeo import gdal  # an independent reader

    probs = probs_for(label_pattern(30, 28), seed=6)
    values = {}
    for dtype in ("uint16", "uint8"):
        dataset = gdal.Open(str(write_heatmaps(make_geotiff, tmp_path, probs, dtype)))
        bands = [dataset.GetRasterBand(b + 1) for b in range(K)]
        values[dtype] = np.stack([b.ReadAsArray() * b.GetScale() + b.GetOffset() for b in bands])
        if dtype == "uint8":
            assert bands[0].DataType == gdal.GDT_Byte and bands[0].GetNoDataValue() == 255
            assert bands[0].GetScale() == pytest.approx(0.004)
        dataset = None
    for dtype, step in (("uint16", 1e-4), ("uint8", 0.004)):
        np.testing.assert_allclose(values[dtype].sum(axis=0), 1.0, atol=1e-9)
        assert np.abs(values[dtype] - probs).max() <= step + 1e-7
    # Whichever encoding: the same probabilities, to the coarser step.
    assert np.abs(values["uint8"] - values["uint16"]).max() <= 0.004 + 1e-4 + 1e-7


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 40)), elements=st.floats(0, 1, width=32)))
def test_uint8_quantisation_sums_exactly_and_stays_within_one_unit(scores: np.ndarray) -> None:
    encoding = heatmap_encoding("uint8")
    total = scores.sum(axis=0, dtype=np.float64)
    quantised = quantize_probabilities(scores, np.ones(scores.shape[1], dtype=bool), encoding)
    assert quantised.dtype == np.uint8 and encoding.scale == 250
    assert np.all(quantised.astype(np.int64).sum(axis=0) == 250)
    nonzero = total > 0
    expected = scores[:, nonzero] / total[nonzero] * 250
    assert np.all(np.abs(quantised[:, nonzero] - expected) < 1.0 + 1e-6)


def test_quantisation_handles_bad_values_and_masks() -> None:
    probs = np.array([[0.5, np.nan, -1.0, 0.0, 0.2], [0.5, 1.0, 2.0, 0.0, np.inf]], dtype=np.float32)
    valid = np.array([True, True, True, True, False])
    quantised = quantize_probabilities(probs, valid)
    np.testing.assert_array_equal(
        quantised[:, :4], [[5000, 0, 0, HEATMAP_SCALE], [5000, HEATMAP_SCALE, HEATMAP_SCALE, 0]]
    )
    assert np.all(quantised[:, 4] == 65535)


@settings(max_examples=80, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(1, 30)),
              elements=st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1, width=32)))  # fmt: skip
def test_argmax_classes_equals_numpy_argmax_with_ties_to_the_lower_class(probs: np.ndarray) -> None:
    np.testing.assert_array_equal(argmax_classes(probs), np.argmax(probs, axis=0))


def test_a_resampled_run_on_an_offset_lattice_goes_back_to_the_input_grid_in_uint8(
    make_geotiff: MakeGeoTiff, tmp_path: Path
) -> None:
    from rasterio.transform import from_origin

    from tests.engine.tiny_assets import ORIGIN

    # 0.5 m pixels whose corner is 0.25 m off the 1 m lattice: the processing grid starts a quarter cell earlier,
    # so input pixel (2r, 2c) has its centre exactly on the centre of processing cell (r, c).
    data = np.random.default_rng(5).integers(1, 255, size=(3, 41, 57), dtype=np.uint8)
    raster = make_geotiff(data, transform=from_origin(ORIGIN[0] + 0.25, ORIGIN[1] - 0.25, 0.5, 0.5), photometric="RGB")
    card = make_tiny_card(gsd_m=1.0)
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    with RasterSource.open(raster, card) as source:
        assert (source.processing_transform.c, source.processing_transform.f) == ORIGIN
        labels = label_pattern(source.height, source.width)
        probs = probs_for(labels, seed=7)
        with SegmentationWriter(source, out, heat, card, {}, heatmap_dtype="uint8") as writer:
            write_all(writer, probs, np.ones(labels.shape, dtype=bool), strip=5)
            writer.commit()
    with rasterio.open(out) as dst, rasterio.open(heat) as hm:
        assert dst.shape == (41, 57) and hm.dtypes[0] == "uint8"
        classes, stored = dst.read(1), hm.read().astype(np.int64)
    rows, cols = 41 // 2 + 1, 57 // 2 + 1
    np.testing.assert_array_equal(classes[::2, ::2], labels[:rows, :cols])
    # There the resampled probabilities are the cell's own (every neighbour's differ), to the UInt8 step.
    assert np.abs(stored[:, ::2, ::2] / 250 - probs[:, :rows, :cols]).max() <= 0.004 + 1e-4
    assert np.all(stored.sum(axis=0) == 250)
    chosen = np.take_along_axis(stored, classes[None].astype(np.int64), axis=0)[0]
    np.testing.assert_array_equal(chosen, stored.max(axis=0))  # the class stays a maximum of what is stored

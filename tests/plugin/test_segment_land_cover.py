"""bicorseg:segmentlandcover end to end in real QGIS, through processing.run, with the tiny 1x1-conv model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import rasterio
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from .conftest import CLASS_NAMES, CRS, PIXEL_M, class_map, write_rgb

pytestmark = pytest.mark.qgis
ALG = "bicorseg:segmentlandcover"


def read_classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_class_raster_has_the_input_grid_nodata_and_the_brightest_band_classes(
    tmp_path, rgb_raster, tiny_model, run_alg
):
    raster, expected = rgb_raster
    result = run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "classes.tif")})
    with rasterio.open(raster) as src_in, rasterio.open(result["OUTPUT"]) as out:
        assert out.crs == src_in.crs
        assert out.transform == src_in.transform
        assert (out.height, out.width) == (src_in.height, src_in.width)
        assert out.dtypes[0] == "uint8"
        assert out.nodata == 255
        classes = out.read(1)
    np.testing.assert_array_equal(classes, expected)
    assert result["DEVICE_USED"] == "cpu"
    assert result["BACKEND_USED"] == "onnxruntime"
    assert result["HEATMAPS"] is None


def test_class_statistics_give_pixels_area_and_percent_per_class(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, expected = rgb_raster
    result = run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "classes.tif")})
    with open(result["CLASS_STATISTICS"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    counts = np.bincount(expected[expected != 255].ravel(), minlength=3)
    assert [r["class_name"] for r in rows] == list(CLASS_NAMES)
    assert [int(r["pixels"]) for r in rows] == counts.tolist()
    for row, count in zip(rows, counts, strict=True):
        assert float(row["area_map_units"]) == pytest.approx(count * PIXEL_M * PIXEL_M)
        assert float(row["percent"]) == pytest.approx(100.0 * count / counts.sum(), abs=1e-3)
    assert result["VALID_PIXELS"] == counts.sum()


def test_heatmaps_are_probabilities_summing_to_one_with_class_band_names(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, expected = rgb_raster
    result = run_alg(
        ALG,
        {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif"),
         "HEATMAPS": str(tmp_path / "heat.tif")},
    )  # fmt: skip
    with rasterio.open(result["HEATMAPS"]) as heat:
        assert heat.count == 3
        assert heat.descriptions == CLASS_NAMES
        raw = heat.read(masked=True)
        probs = raw.astype(np.float64) * np.array(heat.scales)[:, None, None] + np.array(heat.offsets)[:, None, None]
    valid = expected != 255
    assert not raw.mask[:, valid].any()
    assert raw.mask[:, ~valid].all()
    np.testing.assert_allclose(probs.sum(axis=0)[valid], 1.0, atol=1e-6)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    np.testing.assert_array_equal(np.argmax(probs, axis=0)[valid], expected[valid])


@pytest.mark.parametrize(("tile", "overlap", "batch"), [(16, 4, 1), (48, 0, 3), (64, 24, 2)])
def test_classes_do_not_depend_on_tile_overlap_or_batch_size(
    tmp_path, rgb_raster, tiny_model, run_alg, tile, overlap, batch
):
    raster, expected = rgb_raster
    result = run_alg(
        ALG,
        {"INPUT": str(raster), "MODEL": str(tiny_model), "TILE_SIZE": tile, "OVERLAP": overlap,
         "BATCH_SIZE": batch, "OUTPUT": str(tmp_path / "classes.tif")},
    )  # fmt: skip
    np.testing.assert_array_equal(read_classes(result["OUTPUT"]), expected)


def test_progress_is_monotonic_and_ends_at_100(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, _ = rgb_raster
    feedback = QgsProcessingFeedback()
    values: list[float] = []
    feedback.progressChanged.connect(values.append)
    run_alg(
        ALG,
        {
            "INPUT": str(raster),
            "MODEL": str(tiny_model),
            "TILE_SIZE": 16,
            "OVERLAP": 4,
            "OUTPUT": str(tmp_path / "c.tif"),
        },
        feedback=feedback,
    )
    assert len(values) >= 3
    assert values == sorted(values)
    assert values[-1] == pytest.approx(100.0)


def test_cancel_leaves_no_output_and_says_so(tmp_path, tiny_model, run_alg):
    raster = write_rgb(tmp_path / "big.tif", class_map(96, 96))
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda value: feedback.cancel() if value > 0 else None)
    output, heatmaps = tmp_path / "classes.tif", tmp_path / "heat.tif"
    with pytest.raises(QgsProcessingException, match="Canceled"):
        run_alg(
            ALG,
            {"INPUT": str(raster), "MODEL": str(tiny_model), "TILE_SIZE": 16, "OVERLAP": 0,
             "OUTPUT": str(output), "HEATMAPS": str(heatmaps)},
            feedback=feedback,
        )  # fmt: skip
    assert feedback.isCanceled()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


def test_batch_over_several_rasters(tmp_path, tiny_model, run_alg):
    maps = [class_map(24 + 8 * i, 32, seed=i) for i in range(3)]
    for i, classes in enumerate(maps):
        raster = write_rgb(tmp_path / f"in_{i}.tif", classes, seed=10 + i)
        result = run_alg(
            ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / f"out_{i}.tif")}
        )
        np.testing.assert_array_equal(read_classes(result["OUTPUT"]), classes)


def test_extent_limits_processing_and_nodata_fills_the_rest(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, expected = rgb_raster
    x0, y_top = 500_000.0, 2_800_000.0
    # Left 24 columns (12 m), full height, given as "xmin,xmax,ymin,ymax [crs]".
    extent = f"{x0},{x0 + 24 * PIXEL_M},{y_top - 40 * PIXEL_M},{y_top} [{CRS}]"
    result = run_alg(
        ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "EXTENT": extent, "OUTPUT": str(tmp_path / "c.tif")}
    )
    classes = read_classes(result["OUTPUT"])
    np.testing.assert_array_equal(classes[:, :24], expected[:, :24])
    assert (classes[:, 24:] == 255).all()


def test_mask_polygons_are_reprojected_to_the_raster_crs(tmp_path, rgb_raster, tiny_model, run_alg):
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsProject,
        QgsRectangle,
        QgsVectorLayer,
    )

    raster, expected = rgb_raster
    utm_box = QgsRectangle(500_000.0 + 8, 2_800_000.0 - 16, 500_000.0 + 20, 2_800_000.0 - 4)  # cols 16-40, rows 8-32
    to_wgs84 = QgsCoordinateTransform(
        QgsCoordinateReferenceSystem(CRS), QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance()
    )
    polygon = QgsGeometry.fromRect(utm_box)
    polygon.densifyByCount(20)
    polygon.transform(to_wgs84)
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", "mask", "memory")
    feature = QgsFeature()
    feature.setGeometry(polygon)
    layer.dataProvider().addFeatures([feature])
    result = run_alg(
        ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "MASK": layer, "OUTPUT": str(tmp_path / "c.tif")}
    )
    classes = read_classes(result["OUTPUT"])
    inside = (slice(9, 31), slice(17, 39))  # one pixel clear of the reprojected edge
    np.testing.assert_array_equal(classes[inside], expected[inside])
    outside = np.ones_like(classes, dtype=bool)
    outside[7:33, 15:41] = False
    assert (classes[outside] == 255).all()


def test_a_layer_that_is_not_a_file_is_read_through_qgis(tmp_path, rgb_raster, tiny_model, run_alg):
    from osgeo import gdal
    from qgis.core import QgsRasterLayer

    raster, expected = rgb_raster
    memory_path = "/vsimem/bicorseg_test_input.tif"
    gdal.Translate(memory_path, str(raster))
    try:
        layer = QgsRasterLayer(memory_path, "in memory", "gdal")
        assert layer.isValid()
        result = run_alg(ALG, {"INPUT": layer, "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif")})
    finally:
        gdal.Unlink(memory_path)
    with rasterio.open(raster) as src_in, rasterio.open(result["OUTPUT"]) as out:
        assert out.transform.almost_equals(src_in.transform)
        assert (out.height, out.width) == (src_in.height, src_in.width)
        np.testing.assert_array_equal(out.read(1), expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"BANDS": [1, 2, 5]}, "Band 5 does not exist"),
        ({"MODEL": "/nonexistent/model.onnx"}, "does not exist"),
        ({"OUTPUT": "classes.sdat"}, "must be a GeoTIFF"),
    ],
)
def test_bad_parameters_raise_a_clear_processing_exception(tmp_path, rgb_raster, tiny_model, run_alg, change, message):
    raster, _ = rgb_raster
    parameters = {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif")}
    parameters.update(change)
    if parameters["OUTPUT"] == "classes.sdat":
        parameters["OUTPUT"] = str(tmp_path / "classes.sdat")
    with pytest.raises(QgsProcessingException, match=message):
        run_alg(ALG, parameters)


def test_model_without_card_is_refused_with_the_fix(tmp_path, rgb_raster, model_without_card, run_alg):
    raster, _ = rgb_raster
    with pytest.raises(QgsProcessingException, match="card") as caught:
        run_alg(ALG, {"INPUT": str(raster), "MODEL": str(model_without_card), "OUTPUT": str(tmp_path / "c.tif")})
    assert "export" in str(caught.value)
    assert not (tmp_path / "c.tif").exists()


def test_all_nodata_raster_is_refused_and_leaves_nothing(tmp_path, tiny_model, run_alg):
    raster = write_rgb(tmp_path / "empty.tif", class_map(24, 24), all_nodata=True)
    with pytest.raises(QgsProcessingException, match="no valid pixels"):
        run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif")})
    assert not (tmp_path / "c.tif").exists()


def test_cuda_request_runs_on_cuda_or_says_why_it_cannot(tmp_path, rgb_raster, tiny_model, run_alg):
    import onnxruntime

    raster, _ = rgb_raster
    parameters = {"INPUT": str(raster), "MODEL": str(tiny_model), "DEVICE": "cuda", "OUTPUT": str(tmp_path / "c.tif")}
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert run_alg(ALG, parameters)["DEVICE_USED"] == "cuda"
        return
    with pytest.raises(QgsProcessingException, match="CUDA is not usable") as caught:
        run_alg(ALG, parameters)
    assert "onnxruntime-gpu" in str(caught.value)
    assert not (tmp_path / "c.tif").exists()


def test_a_web_tile_layer_is_read_at_the_model_resolution_inside_the_extent(tmp_path, run_alg):
    from PIL import Image
    from qgis.core import QgsRasterLayer

    from .conftest import _card, export_tiny_onnx

    # A local XYZ tile set at zoom 2 (the XYZ provider reads file:// URLs like web tiles): tile (x, y) is
    # coloured red, green or blue by (x + y) % 3, so the tiny model labels all of tile (1, 1) as class 2.
    colours = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]
    for x in range(4):
        for y in range(4):
            (tmp_path / "tiles" / "2" / str(x)).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (256, 256), colours[(x + y) % 3]).save(tmp_path / "tiles" / "2" / str(x) / f"{y}.png")
    url = (tmp_path / "tiles").as_uri() + "/%7Bz%7D/%7Bx%7D/%7By%7D.png"
    layer = QgsRasterLayer(f"type=xyz&url={url}&zmin=2&zmax=2", "tiles", "wms")
    assert layer.isValid()
    model = export_tiny_onnx(tmp_path / "coarse.onnx", card=_card(gsd_m=100_000.0))
    extent = "-8000000,-2000000,2000000,8000000 [EPSG:3857]"  # xmin,xmax,ymin,ymax inside tile (1, 1)
    result = run_alg(ALG, {"INPUT": layer, "MODEL": str(model), "EXTENT": extent, "OUTPUT": str(tmp_path / "c.tif")})
    with rasterio.open(result["OUTPUT"]) as out:
        assert out.crs.to_epsg() == 3857
        assert (out.width, out.height) == (60, 60)  # 6000 km at the model's 100 km per pixel
        assert out.transform.c == pytest.approx(-8_000_000) and out.transform.f == pytest.approx(8_000_000)
        assert (out.read(1) == 2).all()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tif") == ["c.tif"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, {"tile_size_px": "32", "overlap_px": "8"}),  # the tiny model's card
     ({"TILE_SIZE": 24, "OVERLAP": 0, "BATCH_SIZE": 2}, {"tile_size_px": "24", "overlap_px": "0", "batch_size": "2"})],
)  # fmt: skip
def test_tiling_parameters_reach_the_engine_and_defaults_come_from_the_card(
    tmp_path, rgb_raster, tiny_model, run_alg, given, expected
):
    raster, _ = rgb_raster
    parameters = {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif"), **given}
    result = run_alg(ALG, parameters)
    with rasterio.open(result["OUTPUT"]) as out:
        tags = out.tags()
    assert {key: tags[key] for key in expected} == expected
    assert tags["model_name"] == "tiny-test-model"


def test_an_in_memory_layer_with_an_extent_is_read_on_its_own_pixel_grid(tmp_path, rgb_raster, tiny_model, run_alg):
    from osgeo import gdal
    from qgis.core import QgsRasterLayer

    raster, expected = rgb_raster
    memory_path = "/vsimem/bicorseg_test_extent.tif"
    gdal.Translate(memory_path, str(raster))
    # Extent edges fall inside pixels (columns 10.3 .. 20.2, rows 5.4 .. 30.2): reading snaps outwards to whole
    # pixels, and as for files only pixels whose centres lie inside the extent are classified.
    x0, y_top = 500_000.0, 2_800_000.0
    extent = f"{x0 + 10.3 * PIXEL_M},{x0 + 20.2 * PIXEL_M},{y_top - 30.2 * PIXEL_M},{y_top - 5.4 * PIXEL_M} [{CRS}]"
    try:
        layer = QgsRasterLayer(memory_path, "in memory", "gdal")
        result = run_alg(
            ALG, {"INPUT": layer, "MODEL": str(tiny_model), "EXTENT": extent, "OUTPUT": str(tmp_path / "c.tif")}
        )
    finally:
        gdal.Unlink(memory_path)
    with rasterio.open(result["OUTPUT"]) as out:
        assert out.transform.c == pytest.approx(x0 + 10 * PIXEL_M)
        assert out.transform.f == pytest.approx(y_top - 5 * PIXEL_M)
        assert (out.height, out.width) == (26, 11)
        window = expected[5:31, 10:21].copy()
        window[-1, :] = window[:, -1] = 255  # centres at row 30.5 / column 20.5 lie outside the extent
        np.testing.assert_array_equal(out.read(1), window)

"""HBIS_HEATMAPS / HBIS_LAYER and VECTOR_OUTPUT / MIN_AREA of bicorseg:segmentlandcover, in real QGIS.

Expected values come from the input raster (the tiny models' class is the brightest band) and are counted here.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsVectorLayer,
)
from scipy import ndimage

from .conftest import CLASS_COLORS, CLASS_NAMES, CRS, PIXEL_M

pytestmark = pytest.mark.qgis
ALG = "bicorseg:segmentlandcover"


def test_hbis_heatmaps_have_one_probability_band_per_class_and_nodata(tmp_path, rgb_raster, hbis_model, run_alg):
    raster, expected = rgb_raster
    result = run_alg(ALG, {"INPUT": str(raster), "MODEL": str(hbis_model), "OUTPUT": str(tmp_path / "c.tif"),
                           "HBIS_HEATMAPS": str(tmp_path / "hbis.tif")})  # fmt: skip
    assert result["HBIS_HEATMAPS"] == str(tmp_path / "hbis.tif")
    with rasterio.open(result["HBIS_HEATMAPS"]) as heat:
        assert heat.count == 3 and heat.descriptions == CLASS_NAMES
        assert heat.tags()["hbis_layer"] == "1"  # the last of the model's two layers
        raw = heat.read(masked=True)
        probs = raw.astype(np.float64) * np.asarray(heat.scales)[:, None, None]
    valid = expected != 255
    assert raw.mask[:, ~valid].all() and not raw.mask[:, valid].any()
    np.testing.assert_allclose(probs.sum(axis=0)[valid], 1.0, atol=1e-9)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    # The heatmaps average the logits over 2 px blocks: away from class edges they pick the pixel's class.
    interior = ndimage.minimum_filter(expected, size=5) == ndimage.maximum_filter(expected, size=5)
    interior &= valid
    assert interior.sum() > 100
    np.testing.assert_array_equal(probs.argmax(axis=0)[interior], expected[interior])


def test_hbis_layer_out_of_range_is_refused(tmp_path, rgb_raster, hbis_model, run_alg):
    raster, _ = rgb_raster
    with pytest.raises(QgsProcessingException, match=r"HBIS layer 2 does not exist.*numbered 0 to 1"):
        run_alg(ALG, {"INPUT": str(raster), "MODEL": str(hbis_model), "OUTPUT": str(tmp_path / "c.tif"),
                      "HBIS_HEATMAPS": str(tmp_path / "h.tif"), "HBIS_LAYER": 2})  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.tif"]


def test_a_model_without_hbis_heatmaps_is_refused_with_the_reason(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, _ = rgb_raster
    with pytest.raises(QgsProcessingException, match="only BiCoR-Seg models have them"):
        run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif"),
                      "HBIS_HEATMAPS": str(tmp_path / "h.tif")})  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.tif"]


def polygons(path: str) -> tuple[list[tuple[int, str, float]], QgsVectorLayer]:
    layer = QgsVectorLayer(path, "polygons", "ogr")
    assert layer.isValid()
    assert [f.name() for f in layer.fields()][-3:] == ["class_index", "class_name", "area_m2"]
    rows = [(f["class_index"], f["class_name"], f["area_m2"]) for f in layer.getFeatures()]
    return rows, layer


def test_vector_output_areas_add_up_to_the_class_areas_in_the_input_crs(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, expected = rgb_raster
    result = run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif"),
                           "VECTOR_OUTPUT": str(tmp_path / "classes.gpkg")})  # fmt: skip
    rows, layer = polygons(result["VECTOR_OUTPUT"])
    assert layer.crs() == QgsCoordinateReferenceSystem(CRS)
    counts = np.bincount(expected[expected != 255], minlength=3)
    areas = np.zeros(3)
    for index, name, area in rows:
        assert name == CLASS_NAMES[index]
        areas[index] += area
    np.testing.assert_allclose(areas, counts * PIXEL_M * PIXEL_M, rtol=1e-12)
    regions = sum(ndimage.label(expected == k)[1] for k in range(3))
    assert len(rows) == regions


def test_min_area_sieves_small_islands_before_polygonizing(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, expected = rgb_raster
    result = run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif"),
                           "VECTOR_OUTPUT": str(tmp_path / "classes.gpkg"), "MIN_AREA": 20.0})  # fmt: skip
    rows, _ = polygons(result["VECTOR_OUTPUT"])
    assert min(area for _, _, area in rows) >= 20.0  # 80 pixels; the 8 px blocks (16 m²) all merge
    assert sum(area for _, _, area in rows) == pytest.approx((expected != 255).sum() * PIXEL_M * PIXEL_M)


@pytest.fixture
def loaded_run(tmp_path, rgb_raster, hbis_model, qgis_app):
    import processing

    project = QgsProject.instance()
    project.clear()
    context = QgsProcessingContext()
    context.setProject(project)
    raster, _ = rgb_raster
    result = processing.runAndLoadResults(
        ALG,
        {"INPUT": str(raster), "MODEL": str(hbis_model), "OUTPUT": str(tmp_path / "classes.tif"),
         "HBIS_HEATMAPS": str(tmp_path / "hbis.tif"), "VECTOR_OUTPUT": str(tmp_path / "classes.gpkg")},
        feedback=QgsProcessingFeedback(),
        context=context,
    )  # fmt: skip
    yield project, result
    project.clear()


def test_hbis_heatmaps_load_as_hidden_pseudocolour_layers_in_their_own_group(loaded_run):
    project, result = loaded_run
    root = project.layerTreeRoot()
    (run_group,) = [g for g in root.children() if g.name().startswith("Land cover")]
    (hbis_group,) = [g for g in run_group.findGroups() if g.name() == "HBIS heatmaps, layer 1"]
    layers = [node.layer() for node in hbis_group.findLayers()]
    assert sorted(layer.name() for layer in layers) == sorted(f"{name} HBIS heatmap" for name in CLASS_NAMES)
    for layer in layers:
        assert layer.source() == result["HBIS_HEATMAPS"]
        renderer = layer.renderer()
        assert renderer.type() == "singlebandpseudocolor"
        assert layer.name() == f"{CLASS_NAMES[renderer.band() - 1]} HBIS heatmap"
        assert not root.findLayer(layer.id()).itemVisibilityChecked()


def test_vector_output_loads_with_the_class_colours_in_the_runs_group(loaded_run):
    project, result = loaded_run
    root = project.layerTreeRoot()
    (run_group,) = [g for g in root.children() if g.name().startswith("Land cover")]
    direct = [child.layer() for child in run_group.children() if hasattr(child, "layer")]
    (vector,) = [layer for layer in direct if isinstance(layer, QgsVectorLayer)]
    assert vector.source().split("|")[0] == result["VECTOR_OUTPUT"]
    renderer = vector.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class_index"
    categories = [(c.value(), c.label(), c.symbol().color().name()) for c in renderer.categories()]
    assert categories == [(i, CLASS_NAMES[i], CLASS_COLORS[i]) for i in range(3)]
    assert {layer.id() for layer in project.mapLayers().values()} == {n.layer().id() for n in run_group.findLayers()}


def test_the_polygon_style_is_stored_in_the_geopackage(loaded_run):
    _, result = loaded_run
    plain = QgsVectorLayer(result["VECTOR_OUTPUT"], "again", "ogr")  # as a later session opens it
    assert plain.renderer().type() == "categorizedSymbol"
    assert [c.label() for c in plain.renderer().categories()] == list(CLASS_NAMES)

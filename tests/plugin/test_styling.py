"""Loaded outputs: paletted class layer with the card's names and colours, per-class heatmaps, one group, QML."""

from __future__ import annotations

import pytest
from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject, QgsRasterLayer
from qgis.PyQt.QtGui import QColor

from .conftest import CLASS_COLORS, CLASS_NAMES

pytestmark = pytest.mark.qgis
ALG = "bicorseg:segmentlandcover"


@pytest.fixture
def loaded_run(tmp_path, rgb_raster, tiny_model, qgis_app):
    """Run like the toolbox does: outputs loaded into the project, post-processors applied on completion."""
    import processing

    project = QgsProject.instance()
    project.clear()
    context = QgsProcessingContext()
    context.setProject(project)
    raster, _ = rgb_raster
    result = processing.runAndLoadResults(
        ALG,
        {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "classes.tif"),
         "HEATMAPS": str(tmp_path / "heat.tif")},
        feedback=QgsProcessingFeedback(),
        context=context,
    )  # fmt: skip
    yield project, result
    project.clear()


def test_class_layer_is_paletted_with_card_names_and_colours(loaded_run):
    project, result = loaded_run
    layers = [l for l in project.mapLayers().values() if l.source() == result["OUTPUT"]]
    assert len(layers) == 1
    renderer = layers[0].renderer()
    assert renderer.type() == "paletted"
    classes = renderer.classes()
    assert [c.value for c in classes] == [0, 1, 2]
    assert [c.label for c in classes] == list(CLASS_NAMES)
    assert [c.color.name() for c in classes] == list(CLASS_COLORS)
    legend = renderer.legendSymbologyItems()
    assert [(label, colour.name()) for label, colour in legend] == list(zip(CLASS_NAMES, CLASS_COLORS, strict=True))


def test_heatmaps_load_once_per_class_as_hidden_pseudocolour_layers(loaded_run):
    project, result = loaded_run
    heat_layers = [l for l in project.mapLayers().values() if l.source() == result["HEATMAPS"]]
    assert sorted(l.name() for l in heat_layers) == sorted(f"{n} probability" for n in CLASS_NAMES)
    root = project.layerTreeRoot()
    for layer in heat_layers:
        renderer = layer.renderer()
        assert renderer.type() == "singlebandpseudocolor"
        band = renderer.band()
        assert layer.name() == f"{CLASS_NAMES[band - 1]} probability"
        assert renderer.classificationMin() == 0.0 and renderer.classificationMax() == 1.0
        assert not root.findLayer(layer.id()).itemVisibilityChecked()


def test_heatmap_values_read_by_qgis_are_probabilities(loaded_run):
    _project, result = loaded_run
    layer = QgsRasterLayer(result["HEATMAPS"], "heat", "gdal")
    stats = layer.dataProvider().bandStatistics(1)
    assert 0.0 <= stats.minimumValue <= stats.maximumValue <= 1.0


def test_all_outputs_sit_in_one_group_class_layer_first(loaded_run):
    project, result = loaded_run
    root = project.layerTreeRoot()
    groups = [g for g in root.findGroups() if g.name().startswith("Land cover")]
    assert len(groups) == 1
    layers = [node.layer() for node in groups[0].findLayers()]
    assert len(layers) == 1 + len(CLASS_NAMES)
    assert layers[0].source() == result["OUTPUT"]
    assert {l.id() for l in project.mapLayers().values()} == {l.id() for l in layers}


def test_qml_sidecar_restores_the_style_outside_the_post_processor(loaded_run):
    _, result = loaded_run
    # A plain layer (as qgis_process users or a later session would open it) picks up classes.qml by default.
    plain = QgsRasterLayer(result["OUTPUT"], "again", "gdal")
    assert plain.renderer().type() == "paletted"
    assert [c.label for c in plain.renderer().classes()] == list(CLASS_NAMES)
    heat = QgsRasterLayer(result["HEATMAPS"], "heat", "gdal")
    assert heat.renderer().type() == "singlebandpseudocolor"


def test_class_renderer_uses_each_class_colour(qgis_app, tmp_path, rgb_raster):
    from bicorseg_qgis.styling import class_renderer

    raster, _ = rgb_raster
    layer = QgsRasterLayer(str(raster), "in", "gdal")
    renderer = class_renderer(layer.dataProvider(), ["a", "b"], ["#010203", "#fefdfc"])
    assert [(c.value, c.label, c.color) for c in renderer.classes()] == [
        (0, "a", QColor("#010203")),
        (1, "b", QColor("#fefdfc")),
    ]

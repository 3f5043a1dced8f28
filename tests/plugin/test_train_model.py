"""bicorseg:trainmodel and bicorseg:exporttrainingdata in real QGIS, through processing.run.

Fast tests use a tiny raster whose brightest band is the class, label polygons traced from its class map and a tiny
BiCoR-Seg base model; the slow test fine-tunes the embedded default model for one minute on polygons traced from a
Dubai mask and checks that the result beats the base model on held-out polygons.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.training.labelled_raster import NAMES, class_map, trace, write_labels, write_raster

pytestmark = pytest.mark.qgis

REPO = Path(__file__).resolve().parents[2]
TINY = {"backbone": "atto", "embed_dim": 32}
STYLE = {"water": ("Open water", "#1f78b4"), "trees": ("Trees", "#33a02c"), "roofs": ("Roofs", "#e31a1c")}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    import torch

    from engine.export import export_onnx
    from engine.model_card import ModelCard
    from engine.models import create_model

    torch.manual_seed(0)
    card = ModelCard(name="tiny base", architecture="bicorseg_small", class_names=("water", "trees", "roofs"),
                     class_colors=("#0000ff", "#00ff00", "#ff0000"), architecture_args=TINY, norm_mean=(0.5,) * 3,
                     norm_std=(0.25,) * 3, gsd_m=1.0, tile_size_px=64, overlap_px=8)  # fmt: skip
    path = tmp_path_factory.mktemp("base") / "tiny_base.onnx"
    export_onnx(create_model("bicorseg_small", num_classes=3, **TINY), card, path)
    return path


@pytest.fixture
def labelled(tmp_path, qgis_app):
    from qgis.core import (
        QgsCategorizedSymbolRenderer,
        QgsProject,
        QgsRendererCategory,
        QgsSymbol,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtGui import QColor

    classes = class_map(96, 96)
    raster = write_raster(tmp_path / "raster.tif", classes)
    gpkg = write_labels(tmp_path / "labels.gpkg", trace(classes))
    layer = QgsVectorLayer(str(gpkg), "digitised", "ogr")
    assert layer.isValid()
    categories = []
    for value, (label, colour) in STYLE.items():
        symbol = QgsSymbol.defaultSymbol(layer.geometryType())
        symbol.setColor(QColor(colour))
        categories.append(QgsRendererCategory(value, symbol, label))
    layer.setRenderer(QgsCategorizedSymbolRenderer("class", categories))
    QgsProject.instance().addMapLayer(layer)
    yield raster, layer, classes
    QgsProject.instance().removeMapLayer(layer.id())


class _Feedback:
    """A QgsProcessingFeedback that records the log and can cancel after N optimizer steps."""

    def __new__(cls, cancel_after_steps: int | None = None):
        from qgis.core import QgsProcessingFeedback

        class Recording(QgsProcessingFeedback):
            def __init__(self):
                super().__init__()
                self.lines: list[str] = []

            def pushInfo(self, info):
                self.lines.append(info)
                if (
                    cancel_after_steps is not None
                    and sum(line.startswith("step ") for line in self.lines) >= cancel_after_steps
                ):
                    self.cancel()
                super().pushInfo(info)

            def pushWarning(self, warning):
                self.lines.append(warning)
                super().pushWarning(warning)

        return Recording()


def _train(run_alg, raster, labels, tmp_path, feedback=None, **changes):
    parameters = {
        "INPUT": str(raster), "LABELS": labels, "CLASS_FIELD": "class", "MINUTES": 0.02, "TILE_SIZE": 64,
        "DEVICE": "cpu", "OUTPUT_MODEL": str(tmp_path / "out" / "model.onnx"),
        "REPORT": str(tmp_path / "out" / "report.html"),
    }  # fmt: skip
    parameters.update(changes)
    return run_alg("bicorseg:trainmodel", parameters, feedback=feedback)


def test_fine_tune_in_qgis_gives_a_model_segment_land_cover_runs(run_alg, labelled, tiny_base, tmp_path):
    from engine.model_file import ModelFile

    raster, layer, _ = labelled
    feedback = _Feedback()
    result = _train(run_alg, raster, layer, tmp_path, feedback, BASE_MODEL=str(tiny_base), SEGMENT_INPUT=True,
                    OUTPUT=str(tmp_path / "out" / "classes.tif"))  # fmt: skip
    card = ModelFile.open(result["OUTPUT_MODEL"]).card
    # names, colours and order from the layer's categorised style
    assert card.class_names == ("Open water", "Trees", "Roofs")
    assert card.class_colors == ("#1f78b4", "#33a02c", "#e31a1c")
    assert card.base_model_sha256 == ModelFile.open(tiny_base).sha256
    assert Path(result["REPORT"]).read_text().count("data:image/png") == 3
    assert result["STEPS"] >= 1 and 0.0 <= result["VAL_MIOU"] <= 1.0
    assert any(line.startswith("step 1:") and "running" in line for line in feedback.lines)
    assert sum(line.startswith("validation ") and "Open water" in line for line in feedback.lines) >= 2
    with rasterio.open(result["OUTPUT"]) as src:
        assert src.read(1).max() < 3 and src.colormap(1)[0][:3] == (0x1F, 0x78, 0xB4)
    # ... and Segment land cover runs it as MODEL without further steps
    segmented = run_alg("bicorseg:segmentlandcover", {"INPUT": str(raster), "MODEL": result["OUTPUT_MODEL"],
                                                       "OUTPUT": str(tmp_path / "seg.tif")})  # fmt: skip
    with rasterio.open(segmented["OUTPUT"]) as a, rasterio.open(result["OUTPUT"]) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_cancel_stops_promptly_and_writes_nothing(run_alg, labelled, tiny_base, tmp_path):
    from qgis.core import QgsProcessingException

    raster, layer, _ = labelled
    feedback = _Feedback(cancel_after_steps=1)
    with pytest.raises(QgsProcessingException, match="Canceled"):
        _train(run_alg, raster, layer, tmp_path, feedback, BASE_MODEL=str(tiny_base), MINUTES=10.0)
    assert sum(line.startswith("step ") for line in feedback.lines) == 1
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


def test_bad_input_is_one_clear_message(run_alg, labelled, tiny_base, tmp_path, qgis_app):
    from qgis.core import QgsProcessingException, QgsProject, QgsVectorLayer

    raster, layer, classes = labelled
    one = write_labels(tmp_path / "one.gpkg", [(g, "roofs") for g, _ in trace(classes)[:3]])
    far = write_labels(tmp_path / "far.gpkg", trace(classes), crs="EPSG:32633")
    cases = [(one, "class", "only one class value"), (far, "class", "do not overlap the raster"),
             (layer, "nope", "has no field 'nope'")]  # fmt: skip
    for labels, field, message in cases:
        value = labels if not isinstance(labels, Path) else QgsVectorLayer(str(labels), labels.stem, "ogr")
        if isinstance(labels, Path):
            QgsProject.instance().addMapLayer(value)
        with pytest.raises(QgsProcessingException, match=message):
            _train(run_alg, raster, value, tmp_path, BASE_MODEL=str(tiny_base), CLASS_FIELD=field)
    with pytest.raises(QgsProcessingException, match="not both"):
        _train(run_alg, raster, layer, tmp_path, BASE_MODEL=str(tiny_base), ARCHITECTURE="hi_resnet_small")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_labels_in_another_crs_are_reprojected_and_said(run_alg, labelled, tiny_base, tmp_path, qgis_app):
    import rasterio.warp
    from qgis.core import QgsProject, QgsVectorLayer

    raster, _, classes = labelled
    wgs84 = [(rasterio.warp.transform_geom("EPSG:32640", "EPSG:4326", g), v) for g, v in trace(classes)]
    layer = QgsVectorLayer(str(write_labels(tmp_path / "wgs84.gpkg", wgs84, crs="EPSG:4326")), "wgs84", "ogr")
    QgsProject.instance().addMapLayer(layer)
    feedback = _Feedback()
    result = _train(run_alg, raster, layer, tmp_path, feedback, BASE_MODEL=str(tiny_base),
                    OUTPUT_MODEL="TEMPORARY_OUTPUT", REPORT="TEMPORARY_OUTPUT")  # fmt: skip
    assert any("EPSG:4326" in line and "reprojected" in line and "EPSG:32640" in line for line in feedback.lines)
    assert Path(result["OUTPUT_MODEL"]).suffix == ".onnx" and Path(result["OUTPUT_MODEL"]).is_file()
    assert Path(result["REPORT"]).suffix == ".html" and Path(result["REPORT"]).is_file()


def test_export_training_data_writes_the_chips_training_uses(run_alg, labelled, tmp_path):
    from training.chips import main as chips_main

    raster, layer, _ = labelled
    result = run_alg("bicorseg:exporttrainingdata", {"INPUT": str(raster), "LABELS": layer, "CLASS_FIELD": "class",
                                                       "TILE_SIZE": 32, "OVERLAP": 8,
                                                       "OUTPUT_FOLDER": str(tmp_path / "chips")})  # fmt: skip
    manifest = json.loads((Path(result["OUTPUT_FOLDER"]) / "manifest.json").read_text())
    assert [c["name"] for c in manifest["classes"]] == ["Open water", "Trees", "Roofs"]
    assert result["TRAIN_CHIPS"] == manifest["summary"]["train"]["chips"] > 0 and result["VAL_CHIPS"] > 0
    for chip in manifest["chips"]:
        assert (Path(result["OUTPUT_FOLDER"]) / chip["image"]).is_file()
        assert (Path(result["OUTPUT_FOLDER"]) / chip["label"]).is_file()
    assert chips_main(["--raster", str(raster), "--labels", layer.source().split("|")[0], "--class-field", "class",
                       "-o", str(tmp_path / "cli"), "--tile-size", "32", "--overlap", "8"]) == 0  # fmt: skip
    cli = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert [c["name"] for c in cli["classes"]] == sorted(NAMES)  # no style on the command line: the values
    chips = [(c["window"], c["split"], c["labelled_px"]) for c in manifest["chips"]]
    assert [(c["window"], c["split"], c["labelled_px"]) for c in cli["chips"]] == chips


@pytest.mark.slow
def test_one_minute_fine_tune_of_the_default_model_on_dubai_polygons_beats_it(run_alg, qgis_app, tmp_path):
    """Polygons traced from a Dubai mask (tile 1, which the default model never trained on) as the label layer."""
    from qgis.core import QgsProject, QgsVectorLayer

    from benchmarks.dubai_scene import DUBAI, build_scene, reference_window, trace_polygons, write_polygons
    from engine.evaluation.metrics import SegmentationMetrics, confusion_matrix

    assert DUBAI.is_dir(), f"the real Dubai data is expected at {DUBAI} (shared/ beside the repository)"
    scene = build_scene(1, tmp_path / "scene")
    parts = [(r, c) for r in range(3) for c in range(3)]
    held_out = [scene.part_window(r, c) for r, c in parts if r == c]
    shapes = [s for r, c in parts if r != c for s in trace_polygons(scene, scene.part_window(r, c))]
    layer = QgsVectorLayer(str(write_polygons(tmp_path / "labels.gpkg", shapes)), "dubai labels", "ogr")
    QgsProject.instance().addMapLayer(layer)
    result = run_alg("bicorseg:trainmodel", {
        "INPUT": str(scene.raster), "LABELS": layer, "CLASS_FIELD": "class", "MINUTES": 1.0, "DEVICE": "cpu",
        "OUTPUT_MODEL": str(tmp_path / "dubai.onnx"), "REPORT": str(tmp_path / "dubai.html"),
    })  # fmt: skip

    def held_out_miou(model: str) -> float:
        out = run_alg("bicorseg:segmentlandcover", {"INPUT": str(scene.raster), "MODEL": model,
                                                     "OUTPUT": str(tmp_path / f"seg_{len(model)}.tif")})  # fmt: skip
        cm = np.zeros((5, 5), dtype=np.int64)
        with rasterio.open(out["OUTPUT"]) as src:
            for window in held_out:
                predicted, reference = src.read(1, window=window), reference_window(scene, window)
                cm += confusion_matrix(predicted, reference, 5, ignore_index=255, valid=predicted != 255)
        return SegmentationMetrics.from_confusion(cm, ("building", "land", "road", "vegetation", "water")).miou

    base, tuned = held_out_miou(""), held_out_miou(result["OUTPUT_MODEL"])
    print(f"held-out mIoU: base {base:.4f}, fine-tuned {tuned:.4f} after {result['STEPS']} steps")  # shown with -s
    assert tuned > base, (base, tuned)


def test_a_class_raster_with_a_paletted_style_as_labels(run_alg, labelled, tmp_path, qgis_app):
    from qgis.core import QgsPalettedRasterRenderer, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtGui import QColor

    raster, _, classes = labelled
    path = tmp_path / "classes.tif"
    with rasterio.open(raster) as src:
        profile = {**src.profile, "count": 1, "nodata": 255}
        profile.pop("photometric", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write((classes + 1).astype(np.uint8), 1)  # values 1..3
    layer = QgsRasterLayer(str(path), "class raster")
    styles = [QgsPalettedRasterRenderer.Class(v, QColor(c), n) for v, n, c in
              ((1, "Water", "#0000ff"), (2, "Trees", "#00ff00"), (3, "Roofs", "#ff0000"))]  # fmt: skip
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, styles))
    QgsProject.instance().addMapLayer(layer)
    try:
        result = run_alg("bicorseg:exporttrainingdata", {"INPUT": str(raster), "LABELS": layer, "TILE_SIZE": 32,
                                                           "OVERLAP": 0, "OUTPUT_FOLDER": str(tmp_path / "c")})  # fmt: skip
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    manifest = json.loads((Path(result["OUTPUT_FOLDER"]) / "manifest.json").read_text())
    assert [(c["value"], c["name"], c["color"]) for c in manifest["classes"]] == [
        (1, "Water", "#0000ff"), (2, "Trees", "#00ff00"), (3, "Roofs", "#ff0000")]  # fmt: skip
    assert manifest["labels"]["kind"] == "raster"

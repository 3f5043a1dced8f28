"""The real QGIS desktop (under Xvfb) with the plugin from its zip in a fresh profile: the start-up message bar,
the installer, then Segment land cover on the sample raster with the embedded default model, as a user sees it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.network]

REPO = Path(__file__).resolve().parents[2]
CARD = json.loads((REPO / "resources" / "models" / "default.card.json").read_text())


@pytest.fixture(scope="module")
def desktop(tmp_path_factory) -> tuple[dict, Path]:
    spec = importlib.util.spec_from_file_location("desktop_screenshot", REPO / "scripts" / "desktop_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tmp = tmp_path_factory.mktemp("desktop")
    png = tmp / "desktop.png"
    return module.run_desktop(png, tmp / "report.json"), png


def test_start_up_shows_a_message_bar_with_an_install_button_in_a_fresh_profile(desktop):
    report, _ = desktop
    ours = [item for item in report["message_bar_at_start"] if item["title"] == "BiCoR-Seg"]
    assert len(ours) == 1
    assert ours[0]["install_buttons"] == ["Install"]
    assert "rasterio" in ours[0]["text"] and "onnxruntime" in ours[0]["text"]
    assert report["installed_folder"].endswith("profiles/default/python/dependencies/bicorseg-qgis")


def test_class_layer_is_paletted_with_the_cards_names_and_colours(desktop):
    report, _ = desktop
    classes = [layer for layer in report["layers"] if layer["renderer"] == "paletted"]
    assert len(classes) == 1
    assert [c["label"] for c in classes[0]["classes"]] == CARD["class_names"]
    assert [c["color"] for c in classes[0]["classes"]] == [c.lower() for c in CARD["class_colors"]]
    assert [c["value"] for c in classes[0]["classes"]] == list(range(len(CARD["class_names"])))


def test_heatmaps_are_pseudocolour_one_per_class_band(desktop):
    report, _ = desktop
    heatmaps = [layer for layer in report["layers"] if layer["renderer"] == "singlebandpseudocolor"]
    assert sorted(h["name"] for h in heatmaps) == sorted(f"{n} probability" for n in CARD["class_names"])
    assert sorted(h["band"] for h in heatmaps) == list(range(1, len(CARD["class_names"]) + 1))
    for heatmap in heatmaps:
        assert heatmap["ramp"][0][0] == 0.0 and heatmap["ramp"][-1][0] == 1.0


def test_outputs_are_grouped_in_the_layer_tree_and_the_screenshot_is_written(desktop):
    report, png = desktop
    groups = [child for child in report["layer_tree"]["children"] if "group" in child]
    assert [g["group"] for g in groups] == ["Land cover: dubai_sample"]
    names = [child["layer"] for child in groups[0]["children"]]
    assert names[0].startswith("Land cover") and len(names) == 1 + len(CARD["class_names"])
    assert report["screenshot_saved"] is True
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000

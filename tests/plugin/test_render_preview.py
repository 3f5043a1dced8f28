"""scripts/render_preview.py draws input | styled classes | legend with QGIS's renderer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from qgis.PyQt.QtGui import QColor, QImage

from .conftest import CLASS_COLORS

pytestmark = pytest.mark.qgis
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "render_preview.py"


def _script():
    spec = importlib.util.spec_from_file_location("render_preview", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preview_shows_the_class_colours_and_a_legend(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, _ = rgb_raster
    result = run_alg(
        "bicorseg:segmentlandcover",
        {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif"),
         "HEATMAPS": str(tmp_path / "h.tif")},
    )  # fmt: skip
    png = _script().render_preview(
        raster, Path(result["OUTPUT"]), tmp_path / "preview.png", size_px=112,
        heatmaps_path=Path(result["HEATMAPS"]), heatmap_class="built",
    )  # fmt: skip
    image = QImage(str(png))
    assert image.width() > 3 * 112 and image.height() > 80
    # Sample the class panel (second panel): every pixel colour there is a class colour or the white background.
    script = _script()
    left = script.MARGIN_PX * 2 + 112
    top = script.MARGIN_PX + script.TITLE_HEIGHT_PX
    seen = {
        image.pixelColor(x, y).name()
        for x in range(left + 2, left + 110, 3)
        for y in range(top + 14, top + 78, 3)  # below the 4 nodata rows (scaled: 2 rows per input row)
    }
    assert seen <= {*CLASS_COLORS, QColor("white").name()}
    assert len(seen & set(CLASS_COLORS)) == 3

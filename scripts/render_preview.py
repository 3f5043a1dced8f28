"""Render a README preview: input image | styled land-cover classes | legend, with QGIS's own map renderer.

The class layer is styled exactly as the plugin styles it (paletted, class names and colours from the raster's
sidecar QML or, without one, from the model card), so the picture shows what users get in QGIS.

Usage (from the repository root):
    QT_QPA_PLATFORM=offscreen PYTHONPATH=. .venv/bin/python scripts/render_preview.py INPUT.tif \
        [--classes CLASSES.tif | --model MODEL.onnx] [--heatmaps HEAT.tif --heatmap-class NAME] \
        [--size 512] -o docs/preview.png

Without ``--classes`` the script runs ``bicorseg:segmentlandcover`` on INPUT first (embedded default model unless
``--model`` is given) and keeps the outputs next to the PNG.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (
    QgsApplication,
    QgsMapLayer,
    QgsMapRendererCustomPainterJob,
    QgsMapSettings,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QRectF, QSize
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter

REPO = Path(__file__).resolve().parents[1]
QGIS_PLUGINS = "/usr/share/qgis/python/plugins"
MARGIN_PX = 16
LEGEND_WIDTH_PX = 220
TITLE_HEIGHT_PX = 28


def start_qgis() -> QgsApplication:
    """Headless QGIS with Processing and the bicorseg provider."""
    app = QgsApplication([], False)
    app.initQgis()
    if QGIS_PLUGINS not in sys.path:
        sys.path.append(QGIS_PLUGINS)
    from processing.core.Processing import Processing

    Processing.initialize()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bicorseg_qgis.provider import BiCoRSegProvider

    provider = BiCoRSegProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    app.bicorseg_provider = provider  # the registry does not own a Python-made provider: keep it alive
    return app


def segment(input_path: Path, model: Path | None, out_dir: Path, heatmaps: bool) -> dict[str, str]:
    """Run the plugin's algorithm exactly as a user would and return its result dict."""
    import processing

    # Loading a file as a layer makes QGIS cache statistics beside it: hand over the in-memory copy instead.
    proxy = QgsRasterLayer(_statistics_proxy(input_path), input_path.stem, "gdal")
    parameters = {"INPUT": proxy, "OUTPUT": str(out_dir / f"{input_path.stem}_classes.tif")}
    if model is not None:
        parameters["MODEL"] = str(model)
    if heatmaps:
        parameters["HEATMAPS"] = str(out_dir / f"{input_path.stem}_heatmaps.tif")
    return processing.run("bicorseg:segmentlandcover", parameters)


def render_layer(layer: QgsMapLayer, extent_layer: QgsMapLayer, size_px: QSize) -> QImage:
    """Render one layer over ``extent_layer``'s extent into an image."""
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(extent_layer.crs())
    settings.setExtent(extent_layer.extent())
    settings.setOutputSize(size_px)
    settings.setBackgroundColor(QColor("white"))
    image = QImage(size_px, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(QColor("white"))
    painter = QPainter(image)
    job = QgsMapRendererCustomPainterJob(settings, painter)
    job.start()
    job.waitForFinished()
    painter.end()
    return image


def legend_entries(layer: QgsRasterLayer) -> list[tuple[str, QColor]]:
    """(label, colour) of each legend item of the layer's renderer."""
    return [(label, colour) for label, colour in layer.renderer().legendSymbologyItems()]


def compose(panels: list[tuple[str, QImage]], legend: list[tuple[str, QColor]], output: Path) -> Path:
    """Lay out the titled panels side by side, then the legend, and save as PNG."""
    width = sum(image.width() for _, image in panels) + MARGIN_PX * (len(panels) + 1) + LEGEND_WIDTH_PX
    height = max(image.height() for _, image in panels) + TITLE_HEIGHT_PX + 2 * MARGIN_PX
    canvas = QImage(width, height, QImage.Format.Format_ARGB32)
    canvas.fill(QColor("white"))
    painter = QPainter(canvas)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    title_font = QFont()
    title_font.setPointSize(12)
    title_font.setBold(True)
    x = MARGIN_PX
    for title, image in panels:
        painter.setFont(title_font)
        painter.setPen(QColor("#222222"))
        painter.drawText(QRectF(x, MARGIN_PX, image.width(), TITLE_HEIGHT_PX), title)
        painter.drawImage(x, MARGIN_PX + TITLE_HEIGHT_PX, image)
        x += image.width() + MARGIN_PX
    painter.setFont(title_font)
    painter.drawText(QRectF(x, MARGIN_PX, LEGEND_WIDTH_PX, TITLE_HEIGHT_PX), "Legend")
    item_font = QFont()
    item_font.setPointSize(10)
    painter.setFont(item_font)
    y = MARGIN_PX + TITLE_HEIGHT_PX
    for label, colour in legend:
        painter.fillRect(QRectF(x, y + 2, 18, 18), colour)
        painter.setPen(QColor("#444444"))
        painter.drawRect(QRectF(x, y + 2, 18, 18))
        painter.setPen(QColor("#222222"))
        painter.drawText(QRectF(x + 26, y, LEGEND_WIDTH_PX - 30, 22), label)
        y += 26
    painter.end()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not canvas.save(str(output), "PNG"):
        raise SystemExit(f"error: cannot write {output}")
    return output


def _statistics_proxy(raster: Path) -> str:
    """An in-memory copy standing in for ``raster``.

    QGIS computes statistics to stretch the image and GDAL caches them in an ``.aux.xml`` beside the file it
    opened; reading a /vsimem copy keeps that sidecar out of the (possibly committed) input's folder.
    """
    from osgeo import gdal

    proxy = f"/vsimem/bicorseg_preview/{raster.name}"
    gdal.Translate(proxy, str(raster))
    return proxy


def render_preview(
    input_path: Path,
    classes_path: Path,
    output: Path,
    size_px: int = 512,
    heatmaps_path: Path | None = None,
    heatmap_class: str | None = None,
) -> Path:
    """Render input | classes (| one heatmap) | legend to ``output``; returns the PNG path."""
    from bicorseg_qgis.styling import style_heatmap_layer

    image_layer = QgsRasterLayer(_statistics_proxy(input_path), "input", "gdal")
    classes_layer = QgsRasterLayer(str(classes_path), "classes", "gdal")  # picks up the plugin's sidecar QML
    for layer, path in ((image_layer, input_path), (classes_layer, classes_path)):
        if not layer.isValid():
            raise SystemExit(f"error: cannot open {path} as a raster")
    aspect = image_layer.height() / max(image_layer.width(), 1)
    size = QSize(size_px, max(1, round(size_px * aspect)))
    panels = [
        ("Input", render_layer(image_layer, image_layer, size)),
        ("Land cover", render_layer(classes_layer, image_layer, size)),
    ]
    if heatmaps_path is not None:
        heat_layer = QgsRasterLayer(str(heatmaps_path), "heatmaps", "gdal")
        names = [heat_layer.bandName(b) for b in range(1, heat_layer.bandCount() + 1)]
        descriptions = [heat_layer.dataProvider().generateBandName(b) for b in range(1, heat_layer.bandCount() + 1)]
        band = 1
        if heatmap_class is not None:
            matches = [i + 1 for i, n in enumerate(names) if heatmap_class in (n, descriptions[i])]
            band = matches[0] if matches else 1
        style_heatmap_layer(heat_layer, band)
        panels.append((f"Probability: {heatmap_class or names[0]}", render_layer(heat_layer, image_layer, size)))
    return compose(panels, legend_entries(classes_layer), output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="input raster")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--classes", type=Path, help="class raster written by the plugin (else segment now)")
    parser.add_argument("--model", type=Path, help="model for segmenting now (default: the embedded model)")
    parser.add_argument("--heatmaps", type=Path, help="heatmap raster to show one class of")
    parser.add_argument("--heatmap-class", help="class name of the heatmap band to show")
    parser.add_argument("--size", type=int, default=512, help="panel width in pixels")
    args = parser.parse_args(argv)
    app = start_qgis()
    classes, heatmaps = args.classes, args.heatmaps
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if classes is None:
        result = segment(args.input, args.model, args.output.parent, heatmaps=args.heatmap_class is not None)
        classes = Path(result["OUTPUT"])
        heatmaps = Path(result["HEATMAPS"]) if result.get("HEATMAPS") else heatmaps
    written = render_preview(args.input, classes, args.output, args.size, heatmaps, args.heatmap_class)
    sys.stdout.write(f"{written}\n")
    app.exitQgis()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Styles for the outputs: paletted class layer, pseudocolour heatmaps, class polygons, QML sidecars, one group.

Renderers are built from the model card's class names and colours. The QML files written beside the outputs
(``classes.tif`` -> ``classes.qml``) are what QGIS loads by default with the file, so the style survives
``qgis_process`` and later sessions; the GeoTIFF's own colour table keeps it in other GIS software. The class
polygons' style goes into the GeoPackage itself (its ``layer_styles`` table, as the default style), so it never
collides with the class raster's QML when both outputs share a name; other vector formats get a QML sidecar.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProject,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtXml import QDomDocument

from .compat import RAMP_INTERPOLATED

# Probability ramp (0 -> 1): dark blue through teal to yellow, readable on aerial imagery and for colour-blind users.
_RAMP_STOPS = ("#30123b", "#1f9e89", "#fde725")


def class_renderer(
    provider: QgsRasterDataProvider, class_names: Sequence[str], class_colors: Sequence[str]
) -> QgsPalettedRasterRenderer:
    """Paletted renderer on band 1: class index i is drawn in ``class_colors[i]`` and labelled ``class_names[i]``."""
    classes = [
        QgsPalettedRasterRenderer.Class(index, QColor(colour), name)
        for index, (name, colour) in enumerate(zip(class_names, class_colors, strict=True))
    ]
    return QgsPalettedRasterRenderer(provider, 1, classes)


def heatmap_renderer(provider: QgsRasterDataProvider, band: int) -> QgsSingleBandPseudoColorRenderer:
    """Pseudocolour renderer of one heatmap band over the probability range 0..1."""
    ramp = QgsGradientColorRamp(QColor(_RAMP_STOPS[0]), QColor(_RAMP_STOPS[-1]))
    ramp_shader = QgsColorRampShader(0.0, 1.0, ramp, RAMP_INTERPOLATED)
    items = [
        QgsColorRampShader.ColorRampItem(value, QColor(colour), f"{value:.1f}")
        for value, colour in zip((0.0, 0.5, 1.0), _RAMP_STOPS, strict=True)
    ]
    ramp_shader.setColorRampItemList(items)
    shader = QgsRasterShader(0.0, 1.0)
    shader.setRasterShaderFunction(ramp_shader)
    renderer = QgsSingleBandPseudoColorRenderer(provider, band, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(1.0)
    return renderer


#: Field of the class polygons that the categorised renderer classifies on (written by the engine).
CLASS_INDEX_FIELD = "class_index"


def class_vector_renderer(class_names: Sequence[str], class_colors: Sequence[str]) -> QgsCategorizedSymbolRenderer:
    """Categorised renderer on ``class_index``: class i filled with ``class_colors[i]``, labelled ``class_names[i]``."""
    categories = []
    for index, (name, colour) in enumerate(zip(class_names, class_colors, strict=True)):
        outline = QColor(colour).darker(150).name()
        symbol = QgsFillSymbol.createSimple({"color": colour, "outline_color": outline, "outline_width": "0.1"})
        categories.append(QgsRendererCategory(index, symbol, name))
    return QgsCategorizedSymbolRenderer(CLASS_INDEX_FIELD, categories)


def style_class_vector_layer(layer: QgsVectorLayer, class_names: Sequence[str], class_colors: Sequence[str]) -> None:
    """Apply the class colours to a loaded class polygon layer."""
    layer.setRenderer(class_vector_renderer(class_names, class_colors))
    layer.triggerRepaint()


def write_class_vector_style(
    vector_path: Path, class_raster_path: Path, class_names: Sequence[str], class_colors: Sequence[str]
) -> Path | None:
    """Store the polygons' style where QGIS finds it by default; returns the QML written, or None.

    A GeoPackage keeps it inside (default style of its layer); other formats get ``<name>.qml`` beside them,
    unless that is the class raster's own QML (same folder and name), which is never overwritten.
    """
    layer = QgsVectorLayer(str(vector_path), vector_path.stem, "ogr")
    if not layer.isValid():
        raise OSError(f"Cannot open the class polygons '{vector_path}' to style them.")
    style_class_vector_layer(layer, class_names, class_colors)
    if vector_path.suffix.lower() == ".gpkg":
        message = layer.saveStyleToDatabase("land cover classes", "class colours from the model card", True, "")
        if message:
            raise OSError(f"Cannot store the style in '{vector_path}': {message}")
        return None
    qml = vector_path.with_suffix(".qml")
    if qml == sidecar_qml_path(class_raster_path):
        return None
    message, saved = layer.saveNamedStyle(str(qml))
    if not saved:
        raise OSError(f"Cannot write the style file '{qml}': {message}")
    return qml


def style_class_layer(layer: QgsRasterLayer, class_names: Sequence[str], class_colors: Sequence[str]) -> None:
    """Apply the paletted class style to a loaded class raster layer."""
    layer.setRenderer(class_renderer(layer.dataProvider(), class_names, class_colors))
    layer.triggerRepaint()


def style_heatmap_layer(layer: QgsRasterLayer, band: int) -> None:
    """Apply the probability style of ``band`` to a loaded heatmap layer."""
    layer.setRenderer(heatmap_renderer(layer.dataProvider(), band))
    layer.triggerRepaint()


def sidecar_qml_path(raster_path: Path) -> Path:
    """Where QGIS looks for a raster's default style: same folder and stem, ``.qml``."""
    return raster_path.with_suffix(".qml")


def write_class_qml(raster_path: Path, class_names: Sequence[str], class_colors: Sequence[str]) -> Path:
    """Write the paletted class style beside ``raster_path`` and return the QML path."""
    layer = QgsRasterLayer(str(raster_path), raster_path.stem, "gdal")
    style_class_layer(layer, class_names, class_colors)
    return _save_qml(layer, raster_path)


def write_heatmap_qml(raster_path: Path, band: int = 1) -> Path:
    """Write the probability style of one heatmap band beside ``raster_path`` and return the QML path.

    The style is built on a layer without a data source: a layer opened on the file would first give itself
    QGIS's default multiband style, whose contrast stretch reads every pixel of three bands for a histogram (GDAL
    then stores a 1.5 MB histogram in the ``.aux.xml``, and prints ``ERROR 5: dfMax should be strictly greater
    than dfMin`` when a band is constant).
    """
    layer = QgsRasterLayer()
    layer.setRenderer(heatmap_renderer(None, band))
    document = QDomDocument()
    error = layer.exportNamedStyle(document)
    qml = sidecar_qml_path(raster_path)
    if error:
        raise OSError(f"Cannot build the style of '{raster_path.name}': {error}")
    try:
        qml.write_text(document.toString(), encoding="utf-8")
    except OSError as exc:
        raise OSError(f"Cannot write the style file '{qml}': {exc.strerror or exc}") from exc
    return qml


def open_styled_raster(raster_path: Path, name: str) -> QgsRasterLayer:
    """Open a raster whose ``.qml`` sidecar exists: QGIS applies the sidecar and computes no default stretch."""
    layer = QgsRasterLayer(str(raster_path), name, "gdal")
    return layer


def _save_qml(layer: QgsRasterLayer, raster_path: Path) -> Path:
    qml = sidecar_qml_path(raster_path)
    message, saved = layer.saveNamedStyle(str(qml))
    if not saved:
        raise OSError(f"Cannot write the style file '{qml}': {message}")
    return qml


class OutputGroup:
    """One layer-tree group shared by every output of one run (QGIS 3.22's LayerDetails has no groupName).

    A group may sit inside another one (:meth:`subgroup`), e.g. the HBIS heatmaps inside the run's group.
    """

    def __init__(self, name: str, parent: OutputGroup | None = None) -> None:
        self.name = name
        self.parent = parent
        self._group: QgsLayerTreeGroup | None = None

    def subgroup(self, name: str) -> OutputGroup:
        """A group inside this one, created (last in this group) when its first layer arrives."""
        return OutputGroup(name, parent=self)

    def node(self, project: QgsProject) -> QgsLayerTreeGroup:
        """The group's node, created on first use: at the top of the layer tree, or last in its parent group."""
        if self._group is None:
            if self.parent is None:
                self._group = project.layerTreeRoot().insertGroup(0, self.name)
            else:
                self._group = self.parent.node(project).addGroup(self.name)
        return self._group

    def adopt(self, layer: QgsMapLayer, project: QgsProject, position: int = -1, visible: bool = True) -> None:
        """Move ``layer`` (already in the project, or not yet) into the group at ``position`` (-1: last)."""
        group = self.node(project)
        root = project.layerTreeRoot()
        if layer.id() not in project.mapLayers():
            project.addMapLayer(layer, False)
        old = root.findLayer(layer.id())
        new = group.insertLayer(position if position >= 0 else len(group.children()), layer)
        if old is not None and old.parent() is not None:
            old.parent().removeChildNode(old)
        new.setItemVisibilityChecked(visible)


def _project_of(context: QgsProcessingContext) -> QgsProject:
    return context.project() or QgsProject.instance()


class _ClassPostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles a loaded class layer with the card's palette and moves it to the top of the run's group."""

    def __init__(self, class_names: Sequence[str], class_colors: Sequence[str], group: OutputGroup) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.class_colors = tuple(class_colors)
        self.group = group

    def _style(self, layer: QgsMapLayer) -> bool:
        """Style ``layer`` if it is of this post-processor's kind; whether it was."""
        raise NotImplementedError

    def postProcessLayer(
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Runs on the main thread once the layer is in the project."""
        if self._style(layer):
            self.group.adopt(layer, _project_of(context), position=0)


class ClassLayerPostProcessor(_ClassPostProcessor):
    """Styles the loaded class raster with the card's palette and moves it into the run's group."""

    def _style(self, layer: QgsMapLayer) -> bool:
        if not isinstance(layer, QgsRasterLayer):
            return False
        style_class_layer(layer, self.class_names, self.class_colors)
        return True


class ClassVectorPostProcessor(_ClassPostProcessor):
    """Styles the loaded class polygons with the card's colours (categorised on class_index), in the run's group."""

    def _style(self, layer: QgsMapLayer) -> bool:
        if not isinstance(layer, QgsVectorLayer):
            return False
        style_class_vector_layer(layer, self.class_names, self.class_colors)
        return True


class HeatmapLayerPostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Shows the heatmap file as one pseudocolour layer per class (named by class), hidden, in the run's group."""

    def __init__(
        self, class_names: Sequence[str], group: OutputGroup, name_template: str = "{name} probability"
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.group = group
        self.name_template = name_template
        self.layers: list[QgsRasterLayer] = []

    def postProcessLayer(
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Style the loaded layer as class 0 and add one more layer per further class."""
        if not isinstance(layer, QgsRasterLayer):
            return
        project = _project_of(context)
        self.layers = [layer]
        for _ in range(2, min(len(self.class_names), layer.bandCount()) + 1):
            self.layers.append(QgsRasterLayer(layer.source(), "", layer.providerType()))
        for band, band_layer in enumerate(self.layers, start=1):
            band_layer.setName(self.name_template.format(name=self.class_names[band - 1]))
            style_heatmap_layer(band_layer, band)
            self.group.adopt(band_layer, project, visible=False)


_LIVE_POST_PROCESSORS: dict[str, QgsProcessingLayerPostProcessorInterface] = {}


def attach_post_processor(
    context: QgsProcessingContext, output: str, post_processor: QgsProcessingLayerPostProcessorInterface, name: str
) -> bool:
    """Attach ``post_processor`` to ``output`` if it will be loaded; returns whether it will.

    QGIS keeps only a C++ pointer to the post-processor, so a Python reference must outlive the run: the
    latest post-processor of each output path is kept in a module-level dict.
    """
    if not context.willLoadLayerOnCompletion(output):
        return False
    details = context.layerToLoadOnCompletionDetails(output)
    details.name = name
    details.setPostProcessor(post_processor)
    _LIVE_POST_PROCESSORS[output] = post_processor
    return True

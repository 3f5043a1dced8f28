"""``bicorseg:segmentlandcover``: parameters in, one call to the engine pipeline, styled layers out."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsFeatureRequest,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
    QgsUnitTypes,
)

from .. import styling
from ..compat import FILE_BEHAVIOR_FILE, NUMBER_DOUBLE, NUMBER_INTEGER, POLYGON_SOURCE, mark_advanced
from ..feedback import FeedbackProgress
from ..layer_input import file_backed_path, raster_input
from ..parameters import StaticStringEnum, enum_choice
from .base import BiCoRSegAlgorithm

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "onnxruntime", "torch")
#: The engine's value scalings (``engine.VALUE_SCALINGS``), spelled out so the provider loads without numpy.
VALUE_SCALINGS = ("card", "minmax", "percentile")
#: Share of the progress bar for reading a non-file layer into a temporary GeoTIFF.
RENDER_PROGRESS_PERCENT = 20.0


@dataclass(frozen=True)
class _Run:
    """What the algorithm needs besides the engine request: the layer it came from and where reports go."""

    layer: QgsRasterLayer
    statistics_path: Path
    rendered: bool
    model: Any  # the engine's ModelFile, opened once and handed to the run


class SegmentLandCoverAlgorithm(BiCoRSegAlgorithm):
    """Segment land cover in a raster layer with a Hi-ResNet / BiCoR-Seg model (frozen public interface)."""

    INPUT = "INPUT"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    BACKEND = "BACKEND"
    BANDS = "BANDS"
    EXTENT = "EXTENT"
    MASK = "MASK"
    RESAMPLE = "RESAMPLE"
    VALUE_SCALING = "VALUE_SCALING"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    OUTPUT = "OUTPUT"
    HEATMAPS = "HEATMAPS"
    HBIS_HEATMAPS = "HBIS_HEATMAPS"
    HBIS_LAYER = "HBIS_LAYER"
    VECTOR_OUTPUT = "VECTOR_OUTPUT"
    MIN_AREA = "MIN_AREA"
    DEVICE_USED = "DEVICE_USED"
    BACKEND_USED = "BACKEND_USED"
    CLASS_STATISTICS = "CLASS_STATISTICS"
    VALID_PIXELS = "VALID_PIXELS"

    def name(self) -> str:
        """Frozen algorithm id (``bicorseg:segmentlandcover``)."""
        return "segmentlandcover"

    def displayName(self) -> str:
        """Toolbox title."""
        return self.tr("Segment land cover")

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return self.tr(
            "Classifies every pixel of a raster layer into land-cover classes with a Hi-ResNet or BiCoR-Seg model. "
            "The raster is processed in overlapping tiles whose class probabilities are blended, so there are no "
            "seams. Works with any raster layer: files are read directly, web and in-memory layers are read "
            "through QGIS at their native resolution or at the model's.\n\n"
            "MODEL: an .onnx file or PyTorch checkpoint carrying a model card; empty uses the bundled model.\n"
            "BANDS: input bands in the model's order (default: matched from the card).\n"
            "EXTENT / MASK: process only this area / inside these polygons; elsewhere the output is nodata (255). "
            "Typed as text (qgis_process, scripts) EXTENT is xmin,xmax,ymin,ymax [CRS], QGIS's order; the engine's "
            "command line (--extent) takes xmin,ymin,xmax,ymax.\n"
            "RESAMPLE: resample the raster to the model's resolution (its card's ground sampling distance) and the "
            "results back; false runs the model at the raster's own resolution. The log states both resolutions and "
            "the processing grid, warns when they are more than 4x apart, and the run stops when resampling would "
            "multiply the pixel count by more than 16 (use a model for that resolution, or RESAMPLE false).\n"
            "VALUE_SCALING: how raw values map to the model's range: card (the model's own range, e.g. 0-255; the "
            "default), minmax or percentile (each band's own min-max or 2-98 % range, clipped: for 16-bit, float "
            "or signed imagery).\n"
            "TILE_SIZE, BATCH_SIZE: 0 takes the model card's values (a model with a fixed input size sets the tile "
            "size); OVERLAP: -1 takes the card's. A tile larger than the raster is shrunk to one that covers it.\n"
            "OUTPUT: class raster (UInt8, colour table and class names). HEATMAPS: one probability band per class. "
            "Both are GeoTIFFs (.tif or .tiff; other extensions are refused); a missing output folder is created.\n"
            "HBIS_HEATMAPS (BiCoR-Seg models only): the class heatmaps of one HBIS layer, i.e. how similar each "
            "pixel's features are to each class's embedding inside the model, as per-class probabilities (softmax "
            "over classes), one band per class. HBIS_LAYER picks the layer: 0 is the first, -1 (default) the last.\n"
            "VECTOR_OUTPUT: the classes as polygons (GeoPackage, FlatGeobuf or GeoJSON) with class_index, "
            "class_name and area_m2 (planar in a projected CRS, on the ellipsoid in a geographic one). MIN_AREA "
            "(m²): regions smaller than this merge into their largest neighbour first (the class raster is "
            "unchanged).\n"
            "A CSV of the area of each class is written beside OUTPUT."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the frozen parameters (names, types and enum strings are a public interface)."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster layer")))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                self.tr("Model file (.onnx or PyTorch checkpoint with a model card; empty = bundled model)"),
                behavior=FILE_BEHAVIOR_FILE,
                fileFilter=self.tr("Models (*.onnx *.pt *.pth *.ckpt);;All files (*.*)"),
                optional=True,
            )
        )
        # Static strings (models and scripts store "cpu"), also answering to the option numbers qgis_process lists.
        self.addParameter(StaticStringEnum(self.DEVICE, self.tr("Device"), DEVICES, "auto"))
        self.addParameter(StaticStringEnum(self.BACKEND, self.tr("Backend"), BACKENDS, "auto"))
        self.addParameter(
            QgsProcessingParameterBand(
                self.BANDS,
                self.tr("Input bands in the model's order (empty = from the model card)"),
                parentLayerParameterName=self.INPUT,
                optional=True,
                allowMultiple=True,
            )
        )
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Process only this extent"), optional=True))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.MASK, self.tr("Process only inside these polygons"), [POLYGON_SOURCE], optional=True
            )
        )
        # "From the model card" is 0 for tile and batch size (never valid values) and -1 for the overlap, so that
        # an overlap of 0 can still be asked for.
        for name, label, card_value in (
            (self.TILE_SIZE, self.tr("Tile size in pixels (0 = from the model card)"), 0),
            (self.OVERLAP, self.tr("Tile overlap in pixels (-1 = from the model card)"), -1),
            (self.BATCH_SIZE, self.tr("Tiles per batch (0 = automatic)"), 0),
        ):
            self.addParameter(
                mark_advanced(
                    QgsProcessingParameterNumber(
                        name, label, NUMBER_INTEGER, defaultValue=card_value, minValue=card_value
                    )
                )
            )
        # Optional with defaults, so graphical models and scripts saved before these parameters existed still run.
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.RESAMPLE,
                self.tr("Resample to the model's resolution (false: run at the raster's own)"),
                defaultValue=True,
                optional=True,
            )
        )
        self.addParameter(
            StaticStringEnum(
                self.VALUE_SCALING,
                self.tr("Value scaling (card: the model's range; minmax / percentile: each band's own)"),
                VALUE_SCALINGS,
                "card",
                optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Land cover")))
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.HEATMAPS, self.tr("Class probability heatmaps"), optional=True, createByDefault=False
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.HBIS_HEATMAPS,
                self.tr("HBIS class heatmaps (BiCoR-Seg models)"),
                optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(
            mark_advanced(
                QgsProcessingParameterNumber(
                    self.HBIS_LAYER,
                    self.tr("HBIS layer of the class heatmaps (0 = first, -1 = last)"),
                    NUMBER_INTEGER,
                    defaultValue=-1,
                    optional=True,  # graphical models saved before this parameter existed stay valid
                    minValue=-1,
                )
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                self.VECTOR_OUTPUT,
                self.tr("Land cover polygons"),
                POLYGON_SOURCE,
                optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(
            mark_advanced(
                QgsProcessingParameterNumber(
                    self.MIN_AREA,
                    self.tr("Minimum polygon area in m² (smaller regions merge into their largest neighbour)"),
                    NUMBER_DOUBLE,
                    defaultValue=0.0,
                    optional=True,  # graphical models saved before this parameter existed stay valid
                    minValue=0.0,
                )
            )
        )
        self.addOutput(QgsProcessingOutputString(self.DEVICE_USED, self.tr("Device used")))
        self.addOutput(QgsProcessingOutputString(self.BACKEND_USED, self.tr("Backend used")))
        self.addOutput(QgsProcessingOutputFile(self.CLASS_STATISTICS, self.tr("Class area statistics (CSV)")))
        self.addOutput(QgsProcessingOutputNumber(self.VALID_PIXELS, self.tr("Number of classified pixels")))

    def required_modules(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[list[str], list[str]]:
        """Numpy + rasterio always; the backend the parameters ask for (any one for ``auto``)."""
        backend = enum_choice(self, parameters, self.BACKEND, context)
        model = self.parameterAsFile(parameters, self.MODEL, context)
        required = ["numpy", "rasterio"]
        from ..engine import CHECKPOINT_SUFFIXES  # the card module imports only the standard library

        if backend == "torch" or Path(model).suffix.lower() in CHECKPOINT_SUFFIXES:
            return [*required, "torch"], []
        if backend == "onnxruntime":
            return [*required, "onnxruntime"], []
        return required, ["onnxruntime", "torch"]

    def execute(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Build the request, run the engine on this (background) thread, report, and attach the styles."""
        from ..engine import bounded_gdal_cache, segment_raster

        request, run = self.build_request(parameters, context, feedback)
        start = RENDER_PROGRESS_PERCENT if run.rendered else 0.0
        progress = FeedbackProgress(feedback, start_percent=start, span_percent=100.0 - start)
        try:
            # GDAL's cache in QGIS is 5 % of RAM and keeps written blocks: bound it for the run, as the CLI does.
            with bounded_gdal_cache():
                result = segment_raster(request, progress=progress, model=run.model)
        finally:
            if run.rendered:
                Path(request.input_path).unlink(missing_ok=True)
        feedback.setProgress(100.0)
        # The engine already said which backend and device and why; this is the run's summary.
        feedback.pushInfo(
            self.tr("Segmented {tiles} tiles in {seconds:.1f} s with {backend} on {device}.").format(
                tiles=result.tile_count, seconds=result.elapsed_s, backend=result.backend, device=result.device
            )
        )
        self.write_class_statistics(run.statistics_path, result, feedback)
        self.style_outputs(result, run.layer.name(), context, feedback)
        outputs: dict[str, Any] = {
            self.OUTPUT: str(result.output_path),
            self.DEVICE_USED: result.device,
            self.BACKEND_USED: result.backend,
            self.CLASS_STATISTICS: str(run.statistics_path),
            self.VALID_PIXELS: result.valid_pixel_count,
        }
        outputs[self.HEATMAPS] = str(result.heatmaps_path) if result.heatmaps_path is not None else None
        outputs[self.HBIS_HEATMAPS] = None if result.hbis_heatmaps_path is None else str(result.hbis_heatmaps_path)
        outputs[self.VECTOR_OUTPUT] = None if result.vector_path is None else str(result.vector_path)
        return outputs

    def build_request(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> tuple[Any, _Run]:
        """The ONE place that reads this algorithm's parameters: returns the engine request and run details."""
        from ..engine import ModelFile, SegmentationRequest, check_output_paths

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        model_text = self.parameterAsFile(parameters, self.MODEL, context).strip()
        if model_text and not Path(model_text).is_file():
            raise QgsProcessingException(
                self.tr(
                    "Model file '{path}' does not exist; choose an existing .onnx/.pt file or leave MODEL empty."
                ).format(path=model_text)
            )
        model = ModelFile.open(model_text or None)
        bands = tuple(self.parameterAsInts(parameters, self.BANDS, context) or ()) or None
        for band in bands or ():
            if not 1 <= band <= layer.bandCount():
                raise QgsProcessingException(
                    self.tr("Band {band} does not exist: layer '{name}' has bands 1 to {count}; fix BANDS.").format(
                        band=band, name=layer.name(), count=layer.bandCount()
                    )
                )
        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            if not rect.isNull():
                extent = rect
        output = Path(self.parameterAsOutputLayer(parameters, self.OUTPUT, context))
        heatmaps_text = self.parameterAsOutputLayer(parameters, self.HEATMAPS, context)
        hbis_text = self.parameterAsOutputLayer(parameters, self.HBIS_HEATMAPS, context)
        vector_text = self.parameterAsOutputLayer(parameters, self.VECTOR_OUTPUT, context)
        # The engine's one check (the command line makes the same): GeoTIFF extensions only, a missing folder is
        # created; made now so that a web layer is not rendered for outputs that cannot be written.
        check_output_paths(
            [output, *(Path(text) for text in (heatmaps_text, hbis_text) if text)],
            file_backed_path(layer),
            vector_outputs=[Path(vector_text)] if vector_text else [],
        )
        mask = self._mask_geometries(parameters, context, layer)
        card = model.card
        progress = FeedbackProgress(feedback, 0.0, RENDER_PROGRESS_PERCENT)
        source = raster_input(layer, extent, card.gsd_m, context, feedback, progress)
        overlap = self.parameterAsInt(parameters, self.OVERLAP, context)
        request = SegmentationRequest(
            input_path=source.path,
            output_path=output,
            heatmaps_path=Path(heatmaps_text) if heatmaps_text else None,
            model_path=model.path,
            device=enum_choice(self, parameters, self.DEVICE, context),
            backend=enum_choice(self, parameters, self.BACKEND, context),
            bands=bands,
            tile_size_px=self.parameterAsInt(parameters, self.TILE_SIZE, context) or None,
            overlap_px=overlap if overlap >= 0 else None,
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context) or None,
            extent=None
            if extent is None
            else (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()),
            mask_geometries=mask,
            resample_to_model_gsd=self.parameterAsBoolean(parameters, self.RESAMPLE, context),
            value_scaling=enum_choice(self, parameters, self.VALUE_SCALING, context),
            hbis_heatmaps_path=Path(hbis_text) if hbis_text else None,
            hbis_layer=self.parameterAsInt(parameters, self.HBIS_LAYER, context),
            vector_path=Path(vector_text) if vector_text else None,
            min_area_m2=self.parameterAsDouble(parameters, self.MIN_AREA, context),
        )
        statistics = output.with_name(output.stem + "_class_statistics.csv")
        return request, _Run(layer=layer, statistics_path=statistics, rendered=source.rendered, model=model)

    def _mask_geometries(
        self, parameters: dict[str, Any], context: QgsProcessingContext, layer: QgsRasterLayer
    ) -> tuple[dict[str, Any], ...] | None:
        """MASK polygons reprojected to the raster's CRS, as GeoJSON geometry mappings."""
        if parameters.get(self.MASK) in (None, ""):
            return None
        source = self.parameterAsSource(parameters, self.MASK, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.MASK))
        request = QgsFeatureRequest().setDestinationCrs(layer.crs(), context.transformContext())
        request.setNoAttributes()
        geometries = tuple(
            json.loads(feature.geometry().asJson())
            for feature in source.getFeatures(request)
            if feature.hasGeometry() and not feature.geometry().isEmpty()
        )
        if not geometries:
            raise QgsProcessingException(
                self.tr("MASK has no polygons; choose a layer with polygons or leave it empty.")
            )
        return geometries

    def write_class_statistics(self, path: Path, result: Any, feedback: QgsProcessingFeedback) -> None:
        """Write and log pixels, area (map units) and percent of each class, from the engine's pixel counts."""
        layer = QgsRasterLayer(str(result.output_path), "classes", "gdal")
        pixel_area = layer.rasterUnitsPerPixelX() * layer.rasterUnitsPerPixelY()
        units = QgsUnitTypes.toString(layer.crs().mapUnits()) if layer.crs().isValid() else self.tr("pixels")
        if not layer.crs().isValid():
            pixel_area = 1.0
        total = max(result.valid_pixel_count, 1)
        rows = [
            (index, name, count, count * pixel_area, 100.0 * count / total)
            for index, (name, count) in enumerate(zip(result.card.class_names, result.class_pixel_counts, strict=True))
        ]
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class_index", "class_name", "pixels", "area_map_units", "percent"])
            for index, name, count, area, percent in rows:
                writer.writerow([index, name, count, f"{area:.6g}", f"{percent:.4f}"])
        feedback.pushInfo(self.tr("Class areas (map units: {units}):").format(units=units))
        for _, name, count, area, percent in rows:
            feedback.pushInfo(f"  {name}: {count} px, {area:.6g}, {percent:.2f} %")

    def style_outputs(
        self, result: Any, input_name: str, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Write QML sidecars and, for outputs QGIS will load, attach the post-processors of one group."""
        names, colours = result.card.class_names, result.card.class_colors
        styling.write_class_qml(Path(result.output_path), names, colours)
        group = styling.OutputGroup(self.tr("Land cover: {name}").format(name=input_name))
        styling.attach_post_processor(
            context,
            str(result.output_path),
            styling.ClassLayerPostProcessor(names, colours, group),
            self.tr("Land cover ({model})").format(model=result.card.name),
        )
        if result.heatmaps_path is not None:
            styling.write_heatmap_qml(Path(result.heatmaps_path), band=1)
            if context.willLoadLayerOnCompletion(str(result.heatmaps_path)):
                # Opened here, after its style exists, the layer takes the style instead of computing QGIS's
                # default stretch (a histogram of three whole bands); Processing then loads this very layer.
                layer = styling.open_styled_raster(Path(result.heatmaps_path), Path(result.heatmaps_path).stem)
                context.temporaryLayerStore().addMapLayer(layer)
            styling.attach_post_processor(
                context,
                str(result.heatmaps_path),
                styling.HeatmapLayerPostProcessor(names, group, self.tr("{name} probability")),
                self.tr("Class probabilities"),
            )
        if result.hbis_heatmaps_path is not None:
            styling.write_heatmap_qml(Path(result.hbis_heatmaps_path), band=1)
            hbis_group = group.subgroup(self.tr("HBIS heatmaps, layer {layer}").format(layer=result.hbis_layer))
            styling.attach_post_processor(
                context,
                str(result.hbis_heatmaps_path),
                styling.HeatmapLayerPostProcessor(names, hbis_group, self.tr("{name} HBIS heatmap")),
                self.tr("HBIS class heatmaps"),
            )
        if result.vector_path is not None:
            styling.write_class_vector_style(Path(result.vector_path), Path(result.output_path), names, colours)
            styling.attach_post_processor(
                context,
                str(result.vector_path),
                styling.ClassVectorPostProcessor(names, colours, group),
                self.tr("Land cover polygons ({model})").format(model=result.card.name),
            )

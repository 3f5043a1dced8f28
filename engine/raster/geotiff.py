"""GeoTIFF files on one pixel grid (class raster + optional heatmaps and HBIS heatmaps), written in whole block rows.

Rows arrive in order in any count; they are staged until a full :data:`BLOCK_SIZE_PX`-row block row (or the last
rows of the raster) is complete and then written once, so no compressed block is ever rewritten.
"""

from __future__ import annotations

import logging
import warnings

# Only ever parses the .aux.xml sidecar GDAL wrote for our own temporary output, never user input.
import xml.etree.ElementTree as ET  # nosec B405
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetWriter
from rasterio.windows import Window

from ..model_card import NODATA_CLASS, ModelCard
from .heatmaps import HeatmapEncoding, heatmap_encoding
from .write_checks import check_free_space, verify_geotiff, verify_sidecar, write_failure

logger = logging.getLogger(__name__)

#: Tile edge of the written GeoTIFFs, and the row count of a block row.
BLOCK_SIZE_PX = 256

_COMMON_PROFILE: dict[str, Any] = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": BLOCK_SIZE_PX,
    "blockysize": BLOCK_SIZE_PX,
    "compress": "deflate",
    "bigtiff": "IF_SAFER",
}
#: GDAL compression threads (``NUM_THREADS``) for every core: compression is the writer's main cost.
ALL_CPUS = "ALL_CPUS"
#: DEFLATE level of the probability rasters (with the horizontal predictor).
HEATMAP_ZLEVEL = 1


@dataclass(frozen=True)
class OutputGrid:
    """Size and georeference of a written raster.

    Attributes:
        height: Rows.
        width: Columns.
        transform: Affine transform of the grid, or None to write no geotransform (the input had none: GDAL and
            QGIS then use the same pixel grid for both, where an explicit identity would draw upside down).
        crs: CRS, or None for a raster without georeference.
    """

    height: int
    width: int
    transform: Affine | None
    crs: CRS | None


class GridFiles:
    """The class GeoTIFF of one grid, and its probability GeoTIFFs (heatmaps, HBIS heatmaps), open for writing.

    Both probability rasters follow one convention: K bands named after the classes, in the chosen
    :class:`~engine.raster.heatmaps.HeatmapEncoding` (UInt16, scale ``1 / 10000``, nodata 65535 by default; or
    UInt8, scale ``1 / 250``, nodata 255).
    """

    def __init__(
        self,
        grid: OutputGrid,
        classes: DatasetWriter,
        heatmaps: DatasetWriter | None,
        num_classes: int,
        hbis: DatasetWriter | None = None,
        shown: Mapping[Path, Path] | None = None,
        encoding: HeatmapEncoding | None = None,
    ) -> None:
        self.grid = grid
        self.encoding = encoding if encoding is not None else heatmap_encoding()
        self.classes_path = Path(classes.name)
        self.heatmaps_path = None if heatmaps is None else Path(heatmaps.name)
        self.hbis_path = None if hbis is None else Path(hbis.name)
        # What errors call the files: the outputs they become, never the hidden temporaries' names.
        self._shown = dict(shown or {})
        self._classes_ds: DatasetWriter | None = classes
        self._heatmaps_ds = heatmaps
        self._hbis_ds = hbis
        self._num_classes = num_classes
        self._counts = np.zeros(num_classes, dtype=np.int64)
        self._stage_row = 0  # first row of the block row being staged
        self._staged = 0  # rows of it already staged
        rows = min(BLOCK_SIZE_PX, grid.height)
        self._class_stage = np.empty((rows, grid.width), dtype=np.uint8)
        stage = (num_classes, rows, grid.width)
        self._heat_stage = None if heatmaps is None else np.empty(stage, dtype=self.encoding.numpy_dtype)
        self._hbis_stage = None if hbis is None else np.empty(stage, dtype=self.encoding.numpy_dtype)

    @classmethod
    def create(
        cls,
        grid: OutputGrid,
        classes_path: Path,
        heatmaps_path: Path | None,
        card: ModelCard,
        tags: Mapping[str, str],
        hbis_path: Path | None = None,
        hbis_tags: Mapping[str, str] | None = None,
        shown: Mapping[Path, Path] | None = None,
        encoding: HeatmapEncoding | None = None,
        compression_threads: int | str = ALL_CPUS,
    ) -> GridFiles:
        """Create the GeoTIFFs (colour table, band descriptions, scales, nodata and tags set up front).

        Args:
            grid: Size and georeference.
            classes_path: The class raster.
            heatmaps_path: The class probabilities, or None.
            card: Class names and colours.
            tags: Provenance tags of every file.
            hbis_path: BiCoR-Seg's HBIS heatmaps, or None.
            hbis_tags: Further tags of the HBIS heatmaps (which layer, how normalised).
            shown: Maps each path to the output it becomes, named in errors instead of the temporary's name.
            encoding: Storage of the probability rasters (UInt16 if None).
            compression_threads: GDAL compression threads (``NUM_THREADS``): a count or :data:`ALL_CPUS`.
        """
        encoding = encoding if encoding is not None else heatmap_encoding()
        profile = _COMMON_PROFILE | {"num_threads": str(compression_threads)}
        georef: dict[str, Any] = {"height": grid.height, "width": grid.width}
        if grid.transform is not None:
            georef["transform"] = grid.transform
        if grid.crs is not None:
            georef["crs"] = grid.crs
        with warnings.catch_warnings():  # a grid without geotransform is meant: rasterio need not warn
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            classes = rasterio.open(classes_path, "w", count=1, dtype="uint8", nodata=NODATA_CLASS, **georef, **profile)
        heatmaps = hbis = None
        try:
            classes.write_colormap(1, _colormap(card))
            classes.set_band_description(1, "class")
            classes.update_tags(**tags)
            if heatmaps_path is not None:
                heatmaps = _create_probability_raster(heatmaps_path, georef, profile, card, tags, encoding)
            if hbis_path is not None:
                hbis_all_tags = {**tags, **(hbis_tags or {})}
                hbis = _create_probability_raster(hbis_path, georef, profile, card, hbis_all_tags, encoding)
        except BaseException:
            for ds in (classes, heatmaps, hbis):
                if ds is not None:
                    ds.close()
            raise
        return cls(grid, classes, heatmaps, card.num_classes, hbis, shown, encoding)

    @property
    def class_pixel_counts(self) -> tuple[int, ...]:
        """Pixels written per class so far."""
        return tuple(int(c) for c in self._counts)

    def write(
        self,
        row_off: int,
        classes: NDArray[np.uint8],
        heatmaps: NDArray[np.unsignedinteger[Any]] | None,
        hbis: NDArray[np.unsignedinteger[Any]] | None = None,
    ) -> None:
        """Stage rows ``row_off..``: classes (rows, W), heatmaps and HBIS heatmaps (K, rows, W); writes full block rows."""
        if row_off != self._stage_row + self._staged:
            raise ValueError(f"rows must arrive in order: got row {row_off}, expected {self._stage_row + self._staged}")
        done = 0
        while done < classes.shape[0]:
            block_rows = min(BLOCK_SIZE_PX, self.grid.height - self._stage_row)
            take = min(classes.shape[0] - done, block_rows - self._staged)
            rows = slice(self._staged, self._staged + take)
            self._class_stage[rows] = classes[done : done + take]
            if self._heat_stage is not None and heatmaps is not None:
                self._heat_stage[:, rows] = heatmaps[:, done : done + take]
            if self._hbis_stage is not None and hbis is not None:
                self._hbis_stage[:, rows] = hbis[:, done : done + take]
            self._staged += take
            done += take
            if self._staged == block_rows:
                self._flush()

    def _flush(self) -> None:
        if self._staged == 0 or self._classes_ds is None:
            return
        window = Window(0, self._stage_row, self.grid.width, self._staged)
        classes = self._class_stage[: self._staged]
        # GDAL may report a full disk only on stderr: never hand it a block row that cannot fit uncompressed.
        check_free_space(self.classes_path, classes.nbytes, self.shown(self.classes_path))
        self._classes_ds.write(classes, 1, window=window)
        if self._heatmaps_ds is not None and self._heat_stage is not None and self.heatmaps_path is not None:
            heat = self._heat_stage[:, : self._staged]
            check_free_space(self.heatmaps_path, heat.nbytes, self.shown(self.heatmaps_path))
            self._heatmaps_ds.write(heat, window=window)
        if self._hbis_ds is not None and self._hbis_stage is not None and self.hbis_path is not None:
            hbis = self._hbis_stage[:, : self._staged]
            check_free_space(self.hbis_path, hbis.nbytes, self.shown(self.hbis_path))
            self._hbis_ds.write(hbis, window=window)
        # Nodata (255) lands in its own bin, beyond the classes: no copy of the labelled pixels.
        self._counts += np.bincount(classes.ravel(), minlength=NODATA_CLASS + 1)[: self._num_classes]
        self._stage_row += self._staged
        self._staged = 0

    def close(self, discard: bool = False) -> None:
        """Flush staged rows (unless discarding), close the files and check they reached the disk complete.

        Safe to call twice.

        Raises:
            OutputPathError: If a file could not be written completely (full disk, OS error); one line.
        """
        if not discard:
            self._flush()
        for ds in (self._classes_ds, self._heatmaps_ds, self._hbis_ds):
            if ds is not None:
                try:
                    ds.close()
                except Exception as exc:
                    if not discard:
                        raise write_failure(self.shown(Path(ds.name)), exc) from exc
                    logger.debug("Ignoring an error while closing discarded %s", ds.name, exc_info=True)
        closed = [] if discard or self._classes_ds is None else [self.classes_path, self.heatmaps_path, self.hbis_path]
        self._classes_ds = None
        self._heatmaps_ds = None
        self._hbis_ds = None
        for path in closed:
            if path is not None:
                verify_geotiff(path, self.shown(path))

    def shown(self, path: Path) -> Path:
        """The output ``path`` becomes (for messages), or ``path`` itself."""
        return self._shown.get(path, path)

    def write_category_names(self, card: ModelCard) -> None:
        """Store the class names as GDAL category names of the class raster.

        GDAL keeps GeoTIFF category names in the PAM sidecar (``.aux.xml``), exactly as ``SetCategoryNames``
        would; writing it here needs no GDAL Python bindings (rasterio does not expose category names).
        """
        aux = self.classes_path.with_name(self.classes_path.name + ".aux.xml")
        # The sidecar is the one GDAL just wrote for our own temporary output, never user input.
        root = ET.parse(aux).getroot() if aux.exists() else ET.Element("PAMDataset")  # nosec B314
        band = root.find("PAMRasterBand[@band='1']")
        if band is None:
            band = ET.SubElement(root, "PAMRasterBand", {"band": "1"})
        for old in band.findall("CategoryNames"):
            band.remove(old)
        names = ET.SubElement(band, "CategoryNames")
        for name in card.class_names:
            ET.SubElement(names, "Category").text = name
        ET.indent(root)
        shown = self.shown(self.classes_path)
        shown_aux = shown.with_name(shown.name + ".aux.xml")
        try:
            ET.ElementTree(root).write(aux, encoding="unicode")
        except OSError as exc:
            raise write_failure(shown_aux, exc) from exc
        verify_sidecar(aux, shown_aux)


def _create_probability_raster(
    path: Path,
    georef: Mapping[str, Any],
    profile: Mapping[str, Any],
    card: ModelCard,
    tags: Mapping[str, str],
    encoding: HeatmapEncoding,
) -> DatasetWriter:
    """A K-band probability GeoTIFF in ``encoding``: bands named after the classes, scale 1/scale, its nodata."""
    # K bands dominate the writing cost. With the horizontal predictor, DEFLATE level 1 compressed smooth UInt16
    # heatmaps in 0.59x the CPU time of level 3 (used before issue 13) for files 16 % larger; ZSTD level 1 would
    # save another fifth, but not every GIS reads ZSTD.
    with warnings.catch_warnings():  # a grid without geotransform is meant: rasterio need not warn
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dataset = rasterio.open(
            path, "w", count=card.num_classes, dtype=encoding.dtype, nodata=encoding.nodata,
            predictor=2, zlevel=HEATMAP_ZLEVEL, interleave="band", **georef, **profile,
        )  # fmt: skip
    try:
        for band, name in enumerate(card.class_names, start=1):
            dataset.set_band_description(band, name)
        dataset.scales = (1.0 / encoding.scale,) * card.num_classes
        dataset.offsets = (0.0,) * card.num_classes
        dataset.update_tags(**tags)
    except BaseException:
        dataset.close()
        raise
    return dataset


def _colormap(card: ModelCard) -> dict[int, tuple[int, int, int, int]]:
    colours = {
        index: (int(hex_[1:3], 16), int(hex_[3:5], 16), int(hex_[5:7], 16), 255)
        for index, hex_ in enumerate(card.class_colors)
    }
    colours[NODATA_CLASS] = (0, 0, 0, 0)  # nodata stays transparent in viewers that ignore the nodata tag
    return colours

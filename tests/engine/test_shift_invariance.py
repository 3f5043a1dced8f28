"""Shift invariance: a translation-equivariant net gives the same answer wherever the raster (and its tiles) start.

A fixed 3-layer 3x3 convolution net (zero padding, receptive field 3 px) is run through the whole pipeline on a
raster and on the same raster cropped by a few pixels on the top and left. Away from the borders every pixel has
the same neighbourhood in both, so any difference there is added by the engine: how the tiles are blended, where
the processing grid falls when resampling, where the tile grid falls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from numpy.typing import NDArray
from rasterio.transform import from_origin

from engine.inference.pipeline import SegmentationRequest, segment_raster
from engine.model_file import ModelFile
from engine.raster.heatmaps import HEATMAP_SCALE
from tests.engine.tiny_assets import ORIGIN, UTM40N, MakeGeoTiff, TinyModelFiles, make_tiny_card

#: Reach of the net: three 3x3 convolutions.
RECEPTIVE_RADIUS_PX = 3
#: Tiles of 32 px overlapping by 12: blind margins of 3 px, the net's reach.
TILE_PX, OVERLAP_PX = 32, 12


class EquivariantNet:
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv3x3 -> softmax, zero padding, fixed weights (a test backend)."""

    name, device, device_reason = "numpy", "cpu", "test backend"

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.weights = [
            rng.normal(0.0, 0.5, (6, 3, 3, 3)).astype(np.float32),
            rng.normal(0.0, 0.4, (6, 6, 3, 3)).astype(np.float32),
            3.0 * rng.normal(0.0, 0.4, (3, 6, 3, 3)).astype(np.float32),
        ]

    @staticmethod
    def _conv(x: NDArray[np.float32], kernel: NDArray[np.float32]) -> NDArray[np.float32]:
        height, width = x.shape[2:]
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((x.shape[0], kernel.shape[0], height, width), dtype=np.float32)
        for dy in range(3):
            for dx in range(3):
                out += np.einsum("oc,bchw->bohw", kernel[:, :, dy, dx], padded[:, :, dy : dy + height, dx : dx + width])
        return out

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        x = np.maximum(self._conv(batch, self.weights[0]), 0.0)
        x = np.maximum(self._conv(x, self.weights[1]), 0.0)
        logits = self._conv(x, self.weights[2])
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        result: NDArray[np.float32] = exp / exp.sum(axis=1, keepdims=True)
        return result


def smooth_image(height: int, width: int, seed: int = 3) -> NDArray[np.uint8]:
    """A 3-band uint8 image with structure at a few pixels' scale (box-blurred noise)."""
    noise = np.random.default_rng(seed).random((3, height + 4, width + 4))
    blurred = sum(noise[:, dy : dy + height, dx : dx + width] for dy in range(5) for dx in range(5)) / 25.0
    scaled = (blurred - blurred.min()) / (blurred.max() - blurred.min()) * 255.0
    return scaled.astype(np.uint8)


def write_crop(make_geotiff: MakeGeoTiff, image: NDArray[np.uint8], crop_px: int, res_m: float) -> Path:
    """``image`` without its first ``crop_px`` rows and columns, georeferenced where those pixels lie."""
    x0, y0 = ORIGIN
    transform = from_origin(x0 + crop_px * res_m, y0 - crop_px * res_m, res_m, res_m)
    return make_geotiff(
        image[:, crop_px:, crop_px:], name=f"crop_{crop_px}.tif", crs=UTM40N, transform=transform, photometric="RGB"
    )


def segment(raster: Path, tiny: TinyModelFiles, tmp_path: Path, card_gsd_m: float | None, **options: Any) -> Any:
    """(classes (H, W), heatmap units (K, H, W)) of ``raster`` through the whole pipeline."""
    card = make_tiny_card(tile_size_px=TILE_PX, overlap_px=OVERLAP_PX, gsd_m=card_gsd_m)
    model = ModelFile.open(tiny.onnx_path).with_card(card)
    classes, heat = tmp_path / f"{raster.stem}_classes.tif", tmp_path / f"{raster.stem}_heat.tif"
    request = SegmentationRequest(raster, classes, heat, model_path=tiny.onnx_path, **options)
    segment_raster(request, backend=EquivariantNet(), model=model)
    with rasterio.open(classes) as c, rasterio.open(heat) as h:
        return c.read(1), h.read().astype(np.int64)


def assert_same_away_from_borders(original: Any, shifted: Any, crop_px: int, border_px: int) -> None:
    """The shifted raster's result equals the original's over the same ground, ``border_px`` from its edges."""
    inner = np.s_[border_px:-border_px, border_px:-border_px]
    classes_a, heat_a = original[0][crop_px:, crop_px:], original[1][:, crop_px:, crop_px:]
    classes_b, heat_b = shifted
    assert classes_a.shape == classes_b.shape
    np.testing.assert_array_equal(classes_a[inner], classes_b[inner])
    # Probabilities equal to float rounding: at most one quantisation unit (1e-4) apart.
    assert np.abs(heat_a[(slice(None), *inner)] - heat_b[(slice(None), *inner)]).max() <= 1
    assert heat_b[:, classes_b != 255].sum(axis=0).min() == HEATMAP_SCALE


@pytest.mark.parametrize("stitching", ["gaussian", "cosine", "center_crop"])
def test_tile_blending_adds_no_dependence_on_where_the_tiles_fall(
    make_geotiff: MakeGeoTiff, tiny_model_files: TinyModelFiles, tmp_path: Path, stitching: str
) -> None:
    # 5 px crop, 20 px stride: the tiles of the two rasters fall at different places in the scene. Before issue 13
    # the gaussian and cosine windows gave weight to answers the net made at a tile's very edge (up to 0.1 apart).
    image = smooth_image(97, 89)
    rasters = [write_crop(make_geotiff, image, crop, res_m=1.0) for crop in (0, 5)]
    results = [segment(r, tiny_model_files, tmp_path, None, stitching=stitching) for r in rasters]
    assert_same_away_from_borders(*results, crop_px=5, border_px=OVERLAP_PX + RECEPTIVE_RADIUS_PX)


def test_resampling_adds_no_dependence_on_where_the_raster_starts(
    make_geotiff: MakeGeoTiff, tiny_model_files: TinyModelFiles, tmp_path: Path
) -> None:
    # 0.5 m rasters of odd sizes read on the model's 1 m grid, centre-crop stitching (blind to blending): before
    # issue 13 each processing grid was stretched over its raster's own extent (151 px -> 76 cells of 0.993 m,
    # 145 px -> 72 cells of 1.007 m), so the two rasters were resampled onto different pixels.
    image = smooth_image(151, 131)
    rasters = [write_crop(make_geotiff, image, crop, res_m=0.5) for crop in (0, 6)]
    results = [segment(r, tiny_model_files, tmp_path, 1.0, stitching="center_crop") for r in rasters]
    assert_same_away_from_borders(*results, crop_px=6, border_px=2 * (OVERLAP_PX + RECEPTIVE_RADIUS_PX))


@pytest.mark.parametrize("stitching", ["gaussian", "cosine", "center_crop"])
def test_anchored_grid_gives_the_same_tiles_wherever_the_raster_starts(
    make_geotiff: MakeGeoTiff, tiny_model_files: TinyModelFiles, tmp_path: Path, stitching: str
) -> None:
    # With the tile grid fixed in the CRS the two rasters share their tile windows: the same pixels go through the
    # same tiles, also for a model that is not translation-equivariant (checked by the shift-stability benchmark).
    image = smooth_image(97, 89)
    rasters = [write_crop(make_geotiff, image, crop, res_m=1.0) for crop in (0, 7)]
    results = [segment(r, tiny_model_files, tmp_path, None, stitching=stitching, tile_grid="anchored") for r in rasters]
    assert_same_away_from_borders(*results, crop_px=7, border_px=OVERLAP_PX + RECEPTIVE_RADIUS_PX)
    (_, heat_a), (_, heat_b) = results
    inner = np.s_[:, OVERLAP_PX:, OVERLAP_PX:]
    np.testing.assert_array_equal(heat_a[:, 7:, 7:][inner], heat_b[inner])  # bit for bit, not just to rounding

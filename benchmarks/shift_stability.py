"""Shift stability: how much of a segmentation changes when the same image is cut at a different place.

Protocol (issue 13): a real Dubai image (default tile 7, ``image_part_005.jpg``, 2062 x 1816 px) is written as a
GeoTIFF at 0.5 m; the same image cropped by ``s`` px on the top and the left is written beside it (same ground
pixels, so the tile grid falls ``s`` px further into the scene). Both are segmented; the figure is the share of
the pixels both cover whose class differs. Everything runs side by side in one process, for:

* the engine (:func:`engine.inference.pipeline.segment_raster`) per stitching strategy, overlap, shift, tile grid,
  test-time augmentation and preset;
* a naive centre-crop loop over the same model and the same normalised pixels: the image reflect-padded by half
  the overlap, tiles every ``T - O`` px, the central ``T - O`` px of each tile kept (what a 20-line script does);
* the engine with the candidate causes of instability switched back one at a time (``candidates``): band-mean
  padding at the raster edge instead of reflection, the processing grid sized from the raster's own extent instead
  of lying on the model's GSD lattice.

Models: the embedded default (``resources/models/default.onnx``) and a small Deepness-style U-Net
(``benchmarks/models/dubai_unet.onnx``, made by :mod:`benchmarks.shift_unet`).

Usage::

    nice -n 0 env OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.shift_stability \
        --models unet default --threads 1 --out benchmarks/results/shift_stability.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.windows import Window

from benchmarks.synthetic import machine_info, save_results
from engine.backends import load_backend
from engine.inference.pipeline import SegmentationRequest, segment_raster
from engine.model_card import NODATA_CLASS
from engine.model_file import ModelFile
from engine.raster import reader

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "dubai-aerial"
MODELS = {
    "default": REPO / "resources" / "models" / "default.onnx",
    "unet": REPO / "benchmarks" / "models" / "dubai_unet.onnx",
}
#: The GeoTIFF's pixel size: the Dubai tiles published no GSD; the issue's protocol takes 0.5 m.
IMAGE_GSD_M = 0.5
#: Where the first image's top-left corner lies (UTM 40N, Dubai); a whole number of metres.
ORIGIN_XY = (500000.0, 2800000.0)
BORDER_PX = 32
INTERIOR_PX = 256

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One configuration segmented on the original and on a shifted image.

    Attributes:
        name: Short label.
        shift_px: Crop on the top and left, input pixels.
        method: ``"engine"`` or ``"naive"``.
        resample: Run at the card's GSD (True) or at the input's own (False).
        options: SegmentationRequest fields (stitching, overlap_px, tta, tile_grid, ...).
        preset: A named preset applied on top of ``options`` (engine only).
        revert: Candidate causes switched back to their old behaviour (``"mean_padding"``, ``"extent_grid"``).
    """

    name: str
    shift_px: int
    method: str = "engine"
    resample: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    revert: tuple[str, ...] = ()


def write_image_tif(jpg: Path, path: Path, crop_px: int = 0) -> Path:
    """The JPEG as a 3-band GeoTIFF at :data:`IMAGE_GSD_M`, cropped by ``crop_px`` on the top and left."""
    rgb = np.asarray(Image.open(jpg).convert("RGB")).transpose(2, 0, 1)[:, crop_px:, crop_px:]
    x0, y0 = ORIGIN_XY
    transform = from_origin(x0 + crop_px * IMAGE_GSD_M, y0 - crop_px * IMAGE_GSD_M, IMAGE_GSD_M, IMAGE_GSD_M)
    profile = {
        "driver": "GTiff", "height": rgb.shape[1], "width": rgb.shape[2], "count": 3, "dtype": "uint8",
        "crs": "EPSG:32640", "transform": transform, "tiled": True, "compress": "deflate",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(rgb)
        dataset.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    return path


@contextlib.contextmanager
def reverted(causes: tuple[str, ...]) -> Iterator[None]:
    """Switch candidate causes back to the behaviour before issue 13, for a measurement."""
    with contextlib.ExitStack() as stack:
        if "mean_padding" in causes:
            stack.enter_context(mock.patch.object(reader, "EDGE_PADDING", "mean"))
        if "extent_grid" in causes:
            stack.enter_context(mock.patch.object(reader, "SNAP_PROCESSING_GRID", False))
        yield


def run_engine(raster: Path, model: Path, backend: Any, case: Case, folder: Path) -> tuple[np.ndarray, float]:
    """The engine's class raster of ``raster`` (input grid) and the seconds it took."""
    out = folder / f"{raster.stem}_engine.tif"
    request = SegmentationRequest(
        raster, out, model_path=model, backend="onnxruntime", device="cpu", batch_size=1,
        resample_to_model_gsd=case.resample, **case.options,
    )  # fmt: skip
    if case.preset is not None:
        from engine.inference.presets import apply_preset

        request = apply_preset(request, ModelFile.open(model).card, case.preset)
    started = time.perf_counter()
    with reverted(case.revert):
        segment_raster(request, backend=backend)
    seconds = time.perf_counter() - started
    with rasterio.open(out) as dataset:
        return dataset.read(1), seconds


def run_naive(raster: Path, model: Path, backend: Any, case: Case) -> tuple[np.ndarray, float]:
    """A naive centre-crop loop over the same model and the engine's own normalised pixels.

    The processing-grid image is reflect-padded by half the overlap on every side (and up to whole tiles at the
    end); tiles of ``T`` px every ``T - O`` px; the central ``T - O`` px of each tile are kept; classes are the
    arg-max per tile. Resampled runs are mapped back to the input grid with nearest neighbour, as the engine does.
    """
    card = ModelFile.open(model).card
    tile = card.tile_size_px
    overlap = int(case.options.get("overlap_px", card.overlap_px))
    keep, margin = tile - overlap, overlap // 2
    started = time.perf_counter()
    with reader.RasterSource.open(raster, card, resample_to_model_gsd=case.resample) as source:
        image, valid = source.read_tile(Window(0, 0, source.width, source.height))
        height, width = source.height, source.width
        rows, cols = math.ceil(height / keep), math.ceil(width / keep)
        pad = ((0, 0), (margin, rows * keep + tile - keep - margin - height),
               (margin, cols * keep + tile - keep - margin - width))  # fmt: skip
        padded = np.pad(image, pad, mode="reflect")
        classes = np.empty((rows * keep, cols * keep), dtype=np.uint8)
        for r in range(rows):
            for c in range(cols):
                window = padded[None, :, r * keep : r * keep + tile, c * keep : c * keep + tile]
                probs = backend.predict(np.ascontiguousarray(window))[0]
                core = probs[:, margin : margin + keep, margin : margin + keep].argmax(axis=0)
                classes[r * keep : (r + 1) * keep, c * keep : (c + 1) * keep] = core
        classes = classes[:height, :width]
        classes[~valid] = NODATA_CLASS
        if source.resampled:
            back = np.full((source.input_height, source.input_width), NODATA_CLASS, dtype=np.uint8)
            reproject(
                classes, back, src_transform=source.processing_transform, dst_transform=source.transform,
                src_crs=source.crs, dst_crs=source.crs, resampling=Resampling.nearest,
                src_nodata=NODATA_CLASS, dst_nodata=NODATA_CLASS,
            )  # fmt: skip
            classes = back
    return classes, time.perf_counter() - started


def changed_share(original: np.ndarray, shifted: np.ndarray, shift_px: int) -> dict[str, float]:
    """Share of the pixels both images cover (both classified) whose class differs, overall and by border distance."""
    a = original[shift_px:, shift_px:]
    b = shifted
    if a.shape != b.shape:
        raise ValueError(f"overlap shapes differ: {a.shape} vs {b.shape}")
    both = (a != NODATA_CLASS) & (b != NODATA_CLASS)
    differ = (a != b) & both
    rows = np.arange(a.shape[0])[:, None]
    cols = np.arange(a.shape[1])[None, :]
    distance = np.minimum(np.minimum(rows, a.shape[0] - 1 - rows), np.minimum(cols, a.shape[1] - 1 - cols))
    result = {"changed_pct": round(100 * differ.sum() / max(both.sum(), 1), 3)}
    for label, region in (
        (f"within_{BORDER_PX}px_pct", distance < BORDER_PX),
        (f"beyond_{INTERIOR_PX}px_pct", distance >= INTERIOR_PX),
    ):
        inside = both & region
        result[label] = round(100 * (differ & inside).sum() / max(inside.sum(), 1), 3)
    return result


def default_cases(model_key: str, shifts: list[int], quick: bool, card_overlap_px: int = 32) -> list[Case]:
    """The configurations measured for one model (a model given as a path: its card's overlap, 2x and 4x it)."""
    cases: list[Case] = []
    card_overlaps = {"unet": [77, 128, 256], "default": [32, 64, 128]}.get(
        model_key, [card_overlap_px, 2 * card_overlap_px, 4 * card_overlap_px]
    )
    overlaps = card_overlaps[:1] if quick else card_overlaps
    for shift in shifts:
        for resample in (True, False):
            if quick and not resample:
                continue
            tag = "" if resample else "_native"
            for overlap in overlaps:
                cases.append(Case(f"naive_{overlap}{tag}", shift, "naive", resample, {"overlap_px": overlap}))
                for stitching in ("gaussian", "cosine", "center_crop"):
                    options = {"overlap_px": overlap, "stitching": stitching}
                    cases.append(Case(f"engine_{stitching}_{overlap}{tag}", shift, "engine", resample, options))
            base = {"overlap_px": card_overlaps[0]}
            cases.append(Case(f"engine_anchored_{card_overlaps[0]}{tag}", shift, resample=resample,
                              options=base | {"tile_grid": "anchored"}))  # fmt: skip
            cases.append(Case(f"engine_quality{tag}", shift, resample=resample, preset="quality"))
            for revert in (("mean_padding",), ("extent_grid",), ("mean_padding", "extent_grid")):
                if "extent_grid" in revert and not resample:
                    continue
                cases.append(Case(f"engine_revert_{'+'.join(revert)}{tag}", shift, resample=resample, options=base,
                                  revert=revert))  # fmt: skip
    return cases


def run(args: argparse.Namespace) -> dict[str, Any]:
    jpg = DATA / args.image
    results: dict[str, Any] = {
        "benchmark": "shift_stability",
        "command": "python -m benchmarks.shift_stability " + " ".join(args.argv),
        "machine": machine_info(),
        "image": str(jpg.relative_to(DATA)),
        "image_gsd_m": IMAGE_GSD_M,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="shift_stability_") as tmp:
        folder = Path(tmp)
        rasters = {0: write_image_tif(jpg, folder / "original.tif")}
        for shift in args.shifts:
            rasters[shift] = write_image_tif(jpg, folder / f"shift_{shift}.tif", shift)
        for key in args.models:
            model = MODELS[key] if key in MODELS else Path(key)
            model_file = ModelFile.open(model)
            backend = load_backend(model_file, "onnxruntime", "cpu", args.threads)
            card = model_file.card
            rows = []
            for case in default_cases(key, args.shifts, args.quick, card.overlap_px):
                if args.cases and not any(case.name.startswith(prefix) for prefix in args.cases):
                    continue
                classes, seconds = {}, {}
                for shift in (0, case.shift_px):
                    sub = folder / f"{key}_{case.name}_{shift}"
                    sub.mkdir(exist_ok=True)
                    if case.method == "naive":
                        classes[shift], seconds[shift] = run_naive(rasters[shift], model, backend, case)
                    else:
                        classes[shift], seconds[shift] = run_engine(rasters[shift], model, backend, case, sub)
                row = {"case": case.name, "shift_px": case.shift_px, "method": case.method,
                       "resample": case.resample, "options": case.options, "preset": case.preset,
                       "revert": list(case.revert), "seconds_original": round(seconds[0], 2)}  # fmt: skip
                row |= changed_share(classes[0], classes[case.shift_px], case.shift_px)
                logger.warning("%s %s", key, row)
                rows.append(row)
            results["models"][key] = {
                "path": str(model.relative_to(REPO)) if model.is_relative_to(REPO) else str(model),
                "name": card.name,
                "gsd_m": card.gsd_m,
                "tile_px": card.tile_size_px,
                "card_overlap_px": card.overlap_px,
                "rows": rows,
            }
    return results


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet", "default"], help="'unet', 'default' or .onnx paths")
    parser.add_argument("--image", default="tile7/images/image_part_005.jpg", help="relative to the Dubai data")
    parser.add_argument("--shifts", nargs="+", type=int, default=[300, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="card overlap only, resampled only")
    parser.add_argument("--cases", nargs="*", default=[], help="run only cases whose name starts with these")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    save_results("shift_stability" + ("_quick" if args.quick else ""), run(args), args.out)


if __name__ == "__main__":
    main()

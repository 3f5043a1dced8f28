"""Command line: ``python -m engine segment | info | diagnose | evaluate`` (the same code as the QGIS plugin).

Bad input ends with exit code 2 and one line naming the problem and the fix, never a traceback. Ctrl-C ends
with exit code 130. In both cases, and on any failure, nothing is left at the output paths.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import __version__
from .errors import BiCoRSegError, CanceledError
from .inference.presets import PRESETS
from .inference.stitching import stitching_names
from .inference.tiling import TILE_GRIDS
from .inference.tta import TTA_MODES
from .raster.heatmaps import HEATMAP_DTYPES

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "build_parser", "main"]

EXIT_OK = 0
#: Bad input of any kind: missing/corrupt file, bands, tile size, model card, output path.
EXIT_BAD_INPUT = 2
#: Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: GDAL block cache for command-line runs, in MB, unless GDAL_CACHEMAX is already set.
GDAL_CACHE_MB = 32

logger = logging.getLogger(__name__)


class _OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (problem and fix) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message; see --help`` and exit with code 2."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see '{self.prog} --help'.\n")


def _band_list(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected band numbers like 1,2,3, got '{text}'") from None
    if not bands or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"band numbers start at 1, got '{text}'")
    return bands


def _extent(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected xmin,ymin,xmax,ymax in the raster's CRS, got '{text}'")
    return values[0], values[1], values[2], values[3]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``, with a one-line message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m engine`` argument parser."""
    parser = _OneLineParser(prog="python -m engine", description="BiCoR-Seg land-cover segmentation engine.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{segment,info,diagnose,evaluate}")

    segment = commands.add_parser("segment", help="segment a raster into a class raster (+ heatmaps)")
    segment.add_argument("input", type=Path, metavar="INPUT", help="raster to segment (GeoTIFF, VRT, ...)")
    segment.add_argument("-o", "--output", type=Path, required=True, metavar="CLASSES.tif", help="class raster")
    segment.add_argument("--heatmaps", type=Path, metavar="HEAT.tif", help="per-class probability raster")
    segment.add_argument("--model", type=Path, metavar="PATH", help=".onnx or checkpoint; default: embedded model")
    segment.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    segment.add_argument("--backend", choices=("auto", "onnxruntime", "torch"), default="auto")
    segment.add_argument("--bands", type=_band_list, metavar="1,2,3", help="input bands in the model's order")
    segment.add_argument("--tile-size", type=_positive_int, metavar="N", help="tile edge in pixels (card default)")
    segment.add_argument("--overlap", type=_non_negative_int, metavar="N", help="tile overlap in pixels")
    segment.add_argument("--batch-size", type=_positive_int, metavar="N", help="tiles per model call")
    segment.add_argument("--extent", type=_extent, metavar="XMIN,YMIN,XMAX,YMAX", help="process only this area")
    segment.add_argument("--stitching", choices=stitching_names(), default="gaussian", help="tile blending")
    segment.add_argument(
        "--tta", choices=TTA_MODES, default=None, help="test-time augmentation: flip (3x work) or d4 (8x); default none"
    )
    segment.add_argument(
        "--tile-grid", choices=TILE_GRIDS, default=None,
        help="raster: tiles from the raster's corner (default); anchored: tiles fixed in the CRS, so overlapping "
        "clips of one image get the same classes",
    )  # fmt: skip
    segment.add_argument(
        "--preset", choices=PRESETS, default="fast",
        help="fast (default): the card's overlap, no TTA; quality: half-tile overlap, flip TTA and the anchored "
        "grid (6-9x the model calls); explicit options win",
    )  # fmt: skip
    segment.add_argument(
        "--heatmap-dtype", choices=HEATMAP_DTYPES, default="uint16",
        help="heatmap storage: uint16 (steps of 1e-4, default) or uint8 (steps of 0.004, half the size)",
    )  # fmt: skip
    segment.add_argument("--no-resample", action="store_true", help="keep the input resolution (ignore card GSD)")
    segment.add_argument("--cog", action="store_true", help="write Cloud Optimized GeoTIFFs")
    segment.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads for the backend")
    segment.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    segment.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    segment.add_argument("-v", "--verbose", action="store_true", help="log details")

    info = commands.add_parser("info", help="print a model's card as JSON")
    info.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model file; default: embedded model")

    commands.add_parser("diagnose", help="print backends, devices and versions as JSON")

    evaluate = commands.add_parser("evaluate", help="score a class raster against a reference raster")
    evaluate.add_argument("prediction", type=Path, metavar="PRED", help="predicted class raster")
    evaluate.add_argument("reference", type=Path, metavar="REF", help="reference class raster on the same grid")
    evaluate.add_argument(
        "-o", "--output", type=Path, metavar="REPORT.json", help="report (.json, .csv, else HTML); default: stdout"
    )
    evaluate.add_argument("--ignore", type=_non_negative_int, metavar="N", help="reference value that is not scored")
    evaluate.add_argument("--model", type=Path, metavar="PATH", help="model file whose card names the classes")
    evaluate.add_argument("--json", action="store_true", help="print the JSON report on stdout also with -o")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line and return its exit code (never raises for bad input or Ctrl-C).

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` if None.
        stdout: Where JSON goes; ``sys.stdout`` if None.
        stderr: Where messages and the progress bar go; ``sys.stderr`` if None.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    # GDAL's block cache defaults to 5 % of RAM and keeps written blocks until it is full, so a big run's
    # memory would grow with the raster up to that cap; 32 MB still holds a 256-row block row of a 3-band
    # 40,000-px-wide input, enough for overlapping tile reads (see docs/engine.md, Memory).
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one line (or --help / --version)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        if args.command == "segment":
            return _segment(args, out, err)
        if args.command == "info":
            return _info(args, out)
        if args.command == "evaluate":
            return _evaluate(args, out, err)
        return _diagnose(out)
    except CanceledError as exc:
        err.write(f"canceled: {_one_line(exc)}\n")
        return EXIT_INTERRUPTED
    except BiCoRSegError as exc:
        err.write(f"error: {_one_line(exc)}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.write("interrupted (Ctrl-C): no output was written.\n")
        return EXIT_INTERRUPTED


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class _NotPipelineFilter(logging.Filter):
    """Hide the pipeline's own log records: it says the same through the progress reporter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.endswith("engine.inference.pipeline")


def _configure_logging(verbose: bool, err: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_NotPipelineFilter())
    package_logger = logging.getLogger(__package__ or "engine")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    return handler


def _segment(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .inference.pipeline import SegmentationRequest, segment_raster
    from .inference.presets import preset_options
    from .model_file import ModelFile
    from .progress import TqdmProgress

    handler = _configure_logging(args.verbose, err)
    try:
        model = ModelFile.open(args.model)
        preset = preset_options(args.preset, model.card, args.tile_size)
        explicit = {"overlap_px": args.overlap, "tta": args.tta, "tile_grid": args.tile_grid}
        chosen = {key: value for key, value in explicit.items() if value is not None}
        options = {"tta": "none", "tile_grid": "raster"} | preset | chosen
        request = SegmentationRequest(
            input_path=args.input,
            output_path=args.output,
            heatmaps_path=args.heatmaps,
            model_path=args.model,
            device=args.device,
            backend=args.backend,
            bands=args.bands,
            tile_size_px=args.tile_size,
            batch_size=args.batch_size,
            extent=args.extent,
            resample_to_model_gsd=not args.no_resample,
            stitching=args.stitching,
            cog=args.cog,
            heatmap_dtype=args.heatmap_dtype,
            num_threads=args.threads,
            **options,
        )
        with TqdmProgress(description=args.input.name, stream=err, disable=args.quiet) as progress:
            result = segment_raster(request, progress=progress, model=model)
    finally:
        logging.getLogger(__package__ or "engine").removeHandler(handler)
    summary = {
        "output": str(result.output_path),
        "heatmaps": None if result.heatmaps_path is None else str(result.heatmaps_path),
        "model": result.card.name,
        "model_sha256": result.model_sha256,
        "backend": result.backend,
        "device": result.device,
        "device_reason": result.device_reason,
        "tiles": result.tile_count,
        "valid_pixels": result.valid_pixel_count,
        "class_pixel_counts": dict(zip(result.card.class_names, result.class_pixel_counts, strict=True)),
        "elapsed_s": round(result.elapsed_s, 3),
    }
    if args.json:
        out.write(json.dumps(summary, indent=2) + "\n")
    written = str(result.output_path) + ("" if result.heatmaps_path is None else f" and {result.heatmaps_path}")
    err.write(f"wrote {written}: {result.valid_pixel_count} classified pixels in {result.elapsed_s:.1f} s\n")
    return EXIT_OK


def _info(args: argparse.Namespace, out: TextIO) -> int:
    from .model_file import ModelFile

    card = ModelFile.open(args.model or None).card
    out.write(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n")
    return EXIT_OK


def _diagnose(out: TextIO) -> int:
    from .backends import diagnose

    report: dict[str, Any] = diagnose()
    out.write(json.dumps(report, indent=2, default=str) + "\n")
    return EXIT_OK


def _evaluate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .evaluation import evaluate_rasters, report_dict, write_report
    from .progress import TqdmProgress

    with TqdmProgress(description="evaluating", stream=err, disable=args.quiet) as progress:
        result = evaluate_rasters(
            args.prediction, args.reference, ignore_index=args.ignore, model_path=args.model, progress=progress
        )
    metrics = result.metrics
    if args.output is not None:
        write_report(metrics, args.output)
    if args.output is None or args.json:
        out.write(json.dumps(report_dict(metrics), indent=2) + "\n")
    where = "" if args.output is None else f"wrote {args.output}: "
    err.write(
        f"{where}mIoU {metrics.miou:.4f}, mF1 {metrics.mf1:.4f}, OA {metrics.oa:.4f}, kappa {metrics.kappa:.4f} "
        f"over {metrics.pixel_count} pixels\n"
    )
    return EXIT_OK

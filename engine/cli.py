"""Command line: ``python -m engine segment | info | diagnose | evaluate`` (the same code as the QGIS plugin).

Bad input, a full disk or memory running out end with exit code 2 and one line naming the problem and the fix,
never a traceback. Ctrl-C, SIGTERM (what ``timeout``, ``kill``, systemd, Docker and Slurm send) and SIGHUP end
the run the same way, with exit code 128 + the signal number (130, 143, 129). In every case nothing is left at the
output paths.

The engine's messages reach stderr through one logging handler, once each, with option names spelt as this
command's flags (:func:`engine.option_names.for_command_line`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from rasterio.errors import NotGeoreferencedWarning

from . import __version__
from .errors import BiCoRSegError, CanceledError, InvalidInputError, OutOfMemoryError
from .inference.presets import PRESETS
from .inference.stitching import stitching_names
from .inference.tiling import TILE_GRIDS
from .inference.tta import TTA_MODES
from .option_names import for_command_line
from .raster.gdal_cache import GDAL_CACHE_MB
from .raster.heatmaps import HEATMAP_DTYPES
from .raster.value_scaling import VALUE_SCALINGS

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "build_parser", "main"]

EXIT_OK = 0
#: Bad input of any kind: missing/corrupt file, bands, tile size, model card, output path; a failed write.
EXIT_BAD_INPUT = 2
#: Ctrl-C (128 + SIGINT), as shells report it; SIGTERM and SIGHUP exit with 128 + their number likewise.
EXIT_INTERRUPTED = 130
#: The signals that end a run like Ctrl-C (SIGHUP does not exist on Windows).
_STOP_SIGNALS = tuple(
    sig for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig is not None
)

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
        raise argparse.ArgumentTypeError(
            f"expected XMIN,YMIN,XMAX,YMAX in the raster's CRS (QGIS's EXTENT is written xmin,xmax,ymin,ymax), "
            f"got '{text}'"
        )
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
_layer_index = _int_at_least(-1)


def _square_metres(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected square metres such as 100 or 2.5, got '{text}'") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite area >= 0 in m², got '{text}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m engine`` argument parser."""
    parser = _OneLineParser(prog="python -m engine", description="BiCoR-Seg land-cover segmentation engine.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{segment,info,diagnose,evaluate}")

    segment = commands.add_parser("segment", help="segment a raster into a class raster (+ heatmaps)")
    segment.add_argument("input", type=Path, metavar="INPUT", help="raster to segment (GeoTIFF, VRT, ...)")
    segment.add_argument("-o", "--output", type=Path, required=True, metavar="CLASSES.tif", help="class raster")
    segment.add_argument("--heatmaps", type=Path, metavar="HEAT.tif", help="per-class probability raster")
    segment.add_argument(
        "--hbis-heatmaps", type=Path, metavar="PATH", help="BiCoR-Seg's HBIS class heatmaps of one layer (GeoTIFF)"
    )
    segment.add_argument(
        "--hbis-layer", type=_layer_index, default=-1, metavar="N", help="HBIS layer from 0; -1 = the last (default)"
    )
    segment.add_argument(
        "--vector", type=Path, metavar="PATH", help="class polygons (.gpkg, .fgb or .geojson; class, name, area)"
    )
    segment.add_argument(
        "--min-area", type=_square_metres, default=0.0, metavar="M2",
        help="with --vector: merge regions smaller than this many m² into their largest neighbour first",
    )  # fmt: skip
    segment.add_argument("--model", type=Path, metavar="PATH", help=".onnx or checkpoint; default: embedded model")
    segment.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    segment.add_argument("--backend", choices=("auto", "onnxruntime", "torch"), default="auto")
    segment.add_argument("--bands", type=_band_list, metavar="1,2,3", help="input bands in the model's order")
    segment.add_argument("--tile-size", type=_positive_int, metavar="N", help="tile edge in pixels (card default)")
    segment.add_argument("--overlap", type=_non_negative_int, metavar="N", help="tile overlap in pixels")
    segment.add_argument("--batch-size", type=_positive_int, metavar="N", help="tiles per model call")
    segment.add_argument(
        "--extent",
        type=_extent,
        metavar="XMIN,YMIN,XMAX,YMAX",
        help="process only this area, in the raster's CRS, in the order xmin,ymin,xmax,ymax (note: QGIS's EXTENT "
        "parameter is written xmin,xmax,ymin,ymax)",
    )
    segment.add_argument("--stitching", choices=stitching_names(), default="gaussian", help="tile blending")
    segment.add_argument(
        "--tta", choices=TTA_MODES, default=None, help="test-time augmentation: flip (3x work) or d4 (8x); default none"
    )
    segment.add_argument(
        "--no-resample",
        action="store_true",
        help="run at the input's own resolution instead of resampling to the model's (the card's gsd_m)",
    )
    segment.add_argument(
        "--value-scaling",
        choices=VALUE_SCALINGS,
        default="card",
        help="how raw values map to the model's range: card (its input_value_range, default), minmax or "
        "percentile (each band's own min-max or 2-98 %% range: for 16-bit, float or signed imagery)",
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
    segment.add_argument("--cog", action="store_true", help="write Cloud Optimized GeoTIFFs")
    segment.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads for the backend")
    cluster = segment.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers", type=_positive_int, metavar="N", help="run on a local Dask cluster of N worker processes"
    )
    cluster.add_argument(
        "--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster: tcp://HOST:PORT or a scheduler file"
    )
    segment.add_argument(
        "--super-tile", type=_positive_int, metavar="N", help="super-tile edge of a Dask run, a multiple of 256 px"
    )
    segment.add_argument(
        "--upload-model", action="store_true", help="send the model file to each Dask worker (no shared path)"
    )
    segment.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    segment.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    segment.add_argument("-v", "--verbose", action="store_true", help="log details (and GDAL's own messages)")

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
    evaluate.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line and return its exit code (never raises for bad input, Ctrl-C, SIGTERM or SIGHUP).

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` if None.
        stdout: Where JSON goes; ``sys.stdout`` if None.
        stderr: Where messages and the progress bar go; ``sys.stderr`` if None.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    # The engine says itself, once, when a raster has no georeference; rasterio's own warning would repeat it.
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
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
        with _stop_signals_as_interrupts(), _engine_messages_to(err, getattr(args, "verbose", False)):
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
    except MemoryError:
        err.write(f"error: {_one_line(OutOfMemoryError())}\n")
        return EXIT_BAD_INPUT
    except _StopSignal as exc:
        err.write(f"interrupted by {exc.name}: no output was written.\n")
        return 128 + exc.signum
    except KeyboardInterrupt:
        err.write("interrupted (Ctrl-C): no output was written.\n")
        return EXIT_INTERRUPTED


def _one_line(exc: BaseException) -> str:
    """An engine message on one line, with its option names spelt as this command's flags."""
    return for_command_line(" ".join(str(exc).split()))


class _StopSignal(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised in the main thread so that every ``with`` block cleans up (as Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextmanager
def _stop_signals_as_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP (and SIGINT) raise :class:`_StopSignal` in the main thread.

    After the first one the three are ignored until the block ends, so a second signal cannot interrupt the
    clean-up (removing the temporaries) that the first one started.
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise _StopSignal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _CommandLineLogHandler(logging.Handler):
    """Prints the engine's log records on stderr, above the progress bar, once each, in this command's words."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = for_command_line(record.getMessage())
            if record.levelno >= logging.ERROR:
                message = f"error: {message}"
            elif record.levelno >= logging.WARNING:
                message = f"warning: {message}"
            elif record.levelno < logging.INFO:
                message = f"debug: {record.name}: {message}"
            from tqdm import tqdm  # writes above an active bar; plain write without one

            tqdm.write(message, file=self._stream)
        except Exception:  # noqa: BLE001 - a message that cannot be printed must not end the run
            self.handleError(record)


@contextmanager
def _engine_messages_to(err: TextIO, verbose: bool) -> Iterator[None]:
    """The one channel of the engine's messages on the command line: INFO and above (DEBUG with ``-v``).

    GDAL's own messages (logged by rasterio) are shown only with ``-v``: the engine turns the ones that matter
    into its own errors.
    """
    handler = _CommandLineLogHandler(err)
    package_logger = logging.getLogger(__package__ or "engine")
    rasterio_logger = logging.getLogger("rasterio")
    quiet = logging.NullHandler()  # keeps Python's last-resort handler from printing GDAL's lines raw
    saved = (package_logger.level, package_logger.propagate, rasterio_logger.level)
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    package_logger.propagate = False  # printed here once, not again by a handler an embedding program set
    rasterio_logger.addHandler(handler if verbose else quiet)
    if verbose:
        rasterio_logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        rasterio_logger.removeHandler(handler if verbose else quiet)
        package_logger.setLevel(saved[0])
        package_logger.propagate = saved[1]
        rasterio_logger.setLevel(saved[2])


def _segment(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .inference.pipeline import SegmentationRequest, segment_raster
    from .inference.presets import preset_options
    from .model_file import ModelFile
    from .progress import TqdmProgress

    model = None
    preset: dict[str, Any] = {}
    if args.preset != "fast":  # a preset's overlap follows the model's tile size: read its card once
        model = ModelFile.open(args.model)
        preset = preset_options(args.preset, model.card, args.tile_size)
    explicit = {"overlap_px": args.overlap, "tta": args.tta, "tile_grid": args.tile_grid}
    options = {"tta": "none", "tile_grid": "raster"} | preset | {k: v for k, v in explicit.items() if v is not None}
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
        value_scaling=args.value_scaling,
        stitching=args.stitching,
        cog=args.cog,
        heatmap_dtype=args.heatmap_dtype,
        num_threads=args.threads,
        hbis_heatmaps_path=args.hbis_heatmaps,
        hbis_layer=args.hbis_layer,
        vector_path=args.vector,
        min_area_m2=args.min_area,
        **options,
    )
    distributed: dict[str, Any] | None = None
    with TqdmProgress(description=args.input.name, stream=err, disable=args.quiet) as progress:
        if args.workers is None and args.scheduler is None:
            if args.super_tile is not None or args.upload_model:
                raise InvalidInputError("--super-tile and --upload-model need --workers N or --scheduler ADDRESS.")
            result = segment_raster(request, progress=progress, model=model)
        else:
            result, distributed = _segment_on_dask(args, request, progress)
    summary = {
        "output": str(result.output_path),
        "heatmaps": None if result.heatmaps_path is None else str(result.heatmaps_path),
        "hbis_heatmaps": None if result.hbis_heatmaps_path is None else str(result.hbis_heatmaps_path),
        "hbis_layer": result.hbis_layer,
        "vector": None if result.vector_path is None else str(result.vector_path),
        "vector_features": result.vector_feature_count,
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
    if distributed is not None:
        summary["distributed"] = distributed
    if args.json:
        out.write(json.dumps(summary, indent=2) + "\n")
    extras = [p for p in (result.heatmaps_path, result.hbis_heatmaps_path, result.vector_path) if p is not None]
    written = ", ".join(str(p) for p in (result.output_path, *extras))
    err.write(f"wrote {written}: {result.valid_pixel_count} classified pixels in {result.elapsed_s:.1f} s\n")
    return EXIT_OK


def _segment_on_dask(args: argparse.Namespace, request: Any, progress: Any) -> tuple[Any, dict[str, Any]]:
    """Run ``request`` on Dask; the result and the ``distributed`` part of the JSON summary."""
    from .distributed import DEFAULT_SUPER_TILE_PX, ClusterOptions, segment_distributed

    options = ClusterOptions(
        workers=args.workers,
        scheduler=args.scheduler,
        super_tile_px=args.super_tile or DEFAULT_SUPER_TILE_PX,
        upload_model=args.upload_model,
    )
    run = segment_distributed(request, options, progress=progress)
    return run.result, {
        "super_tile_px": run.super_tile_px,
        "super_tiles": run.super_tiles,
        "tiles_computed": run.tiles_computed,
        "redundant_tile_share": round(run.redundant_tile_share, 4),
        "compute_s": round(run.compute_s, 3),
        "assemble_s": round(run.assemble_s, 3),
        "workers": [
            {
                "worker": w.worker,
                "tasks": w.tasks,
                "tiles": w.tiles,
                "tiles_run": w.tiles_run,
                "valid_pixels": w.valid_pixel_count,
                "seconds": w.seconds,
            }
            for w in run.workers
        ],
    }


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

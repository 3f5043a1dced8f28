"""What runs on a Dask worker: one super-tile through the engine's own tile loop, written as a block-aligned part.

:func:`run_super_tile` is the task. It opens the input exactly as a single-process run does
(:class:`~engine.raster.reader.RasterSource`), runs :func:`~engine.inference.pipeline.stitch_raster` restricted
to its window (the global grid's tiles that overlap it, the global weights) and writes the window with a
:class:`~engine.raster.writer.SegmentationWriter` (the same argmax, nodata, quantisation and atomic move) into the
run's parts folder. Tiles without a valid pixel are skipped by the tile loop and never reach the model.

The model travels as a :class:`ModelRef` (path and SHA-256, a few hundred bytes), never as bytes per task: each
worker process opens the file and builds one inference session per model and settings the first time a task needs
it, and keeps it for its lifetime (:func:`worker_model`). Dask is imported only inside functions, so this module
imports without it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from .. import __version__
from ..backends import load_backend
from ..backends.threads import physical_core_count
from ..errors import BiCoRSegError, CanceledError, DistributedRunError, ModelLoadError
from ..inference.pipeline import open_request_raster, request_margins, stitch_raster
from ..inference.request import SegmentationRequest
from ..inference.tiling import TilingSpec, mirror_depth_px
from ..inference.tta import Predictor, make_predictor
from ..model_file import ModelFile
from ..raster.reader import RasterSource
from ..raster.write_behind import WriteBehind
from ..raster.writer import SegmentationWriter

__all__ = [
    "UPLOAD_FOLDER",
    "ModelRef",
    "PartResult",
    "SuperTileJob",
    "WorkerModel",
    "run_super_tile",
    "session_loads",
    "worker_model",
]

logger = logging.getLogger(__name__)

#: Folder, inside a worker's local directory, holding models uploaded by the client (``--upload-model``).
UPLOAD_FOLDER = "bicorseg-models"
#: Seconds between two progress events of one task.
_PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class ModelRef:
    """How a worker finds the model and builds its session: small, pickled with every task instead of the model.

    Attributes:
        path: The model file's path as the client sees it (used unless ``uploaded``).
        sha256: SHA-256 of the file; a worker whose file differs refuses to run.
        backend: ``"auto"``, ``"onnxruntime"`` or ``"torch"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        num_threads: Backend CPU threads; None = the worker's cores divided by its Dask threads.
        tta: Test-time augmentation mode.
        uploaded: The client uploaded the file once to every worker (see :mod:`engine.distributed.upload`).
    """

    path: str
    sha256: str
    backend: str = "auto"
    device: str = "auto"
    num_threads: int | None = None
    tta: str = "none"
    uploaded: bool = False


@dataclass
class WorkerModel:
    """A model loaded in one worker process: the file, the backend and the checked predictor."""

    file: ModelFile
    backend: Any
    predictor: Predictor
    path: Path


_MODELS: dict[tuple[Any, ...], WorkerModel] = {}
_MODELS_LOCK = threading.Lock()
_LOADS = 0


def session_loads() -> int:
    """How many inference sessions this process has built (a test hook: one per model and settings)."""
    return _LOADS


def uploaded_model_path(local_directory: str | os.PathLike[str], sha256: str, suffix: str) -> Path:
    """Where an uploaded model lies in a worker's local directory."""
    return Path(local_directory) / UPLOAD_FOLDER / f"{sha256}{suffix}"


def worker_model(ref: ModelRef) -> WorkerModel:
    """The model of ``ref`` loaded in this process, built on first use and kept for the process's lifetime.

    Raises:
        ModelLoadError: If the file is not there on this worker or differs from the client's (the message says
            how to give every worker the same file).
        BackendUnavailableError: If the backend library or device is not usable on this worker.
    """
    global _LOADS
    key = (ref.sha256, ref.backend, ref.device, ref.num_threads, ref.tta)
    with _MODELS_LOCK:
        cached = _MODELS.get(key)
        if cached is not None:
            return cached
        where = _worker_address()
        if ref.uploaded:
            worker = _current_worker()
            local = worker.local_directory if worker is not None else "."
            path = uploaded_model_path(local, ref.sha256, Path(ref.path).suffix)
        else:
            path = Path(ref.path)
        if not path.is_file():
            raise ModelLoadError(
                f"Model file '{path}' is not there on worker {where}; put it on a path every worker reads (a shared "
                "file system) or pass --upload-model to send it to each worker once."
            )
        model = ModelFile.open(path)
        if model.sha256 != ref.sha256:
            raise ModelLoadError(
                f"Model file '{path}' on worker {where} differs from the client's (SHA-256 {model.sha256[:12]}... "
                f"instead of {ref.sha256[:12]}...); give every worker the same file or pass --upload-model."
            )
        threads = ref.num_threads if ref.num_threads is not None else _default_threads()
        backend = load_backend(model, backend=ref.backend, device=ref.device, num_threads=threads)
        loaded = WorkerModel(model, backend, make_predictor(backend, model.card.num_classes, ref.tta), path)
        _MODELS[key] = loaded
        _LOADS += 1
        logger.info("Worker %s loaded '%s' with %s on %s.", where, path.name, backend.name, backend.device)
        return loaded


def _default_threads() -> int:
    """The worker's physical cores shared among the tasks it runs at once."""
    worker = _current_worker()
    tasks_at_once = int(getattr(getattr(worker, "state", None), "nthreads", 1) or 1) if worker is not None else 1
    return max(1, physical_core_count() // tasks_at_once)


def _current_worker() -> Any:
    """The Dask worker running this code, or None outside a worker (direct calls in tests)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _worker_address() -> str:
    worker = _current_worker()
    return str(worker.address) if worker is not None else f"pid {os.getpid()}"


@dataclass(frozen=True)
class SuperTileJob:
    """Everything one task needs (pickled to the worker; no model bytes, no arrays).

    Attributes:
        index: The super-tile's index in the plan.
        window: ``(col_off, row_off, width, height)`` on the processing grid, block-aligned.
        request: The run's request (input, bands, extent, mask, resampling, stitching, ...).
        model: How to find and run the model.
        spec: The tiling (tile size and overlap) of the whole run.
        batch_size: Tiles per model call.
        parts_dir: Shared folder the part goes into; its removal tells the task to stop.
        run_id: Names the run's progress events.
        engine_version: The client's engine version; a worker with another one refuses the task.
    """

    index: int
    window: tuple[int, int, int, int]
    request: SegmentationRequest
    model: ModelRef
    spec: TilingSpec
    batch_size: int
    parts_dir: str
    run_id: str
    engine_version: str = __version__


@dataclass(frozen=True)
class PartResult:
    """What a task reports back (the part itself stays in the parts folder).

    Attributes:
        index: The super-tile's index.
        classes_path: The part's class raster.
        heatmaps_path: The part's heatmaps, or None.
        tiles: Tiles of the global grid overlapping the window.
        tiles_run: Of them, tiles that went through the model (the others had no valid pixel).
        valid_pixel_count: Valid pixels of the window (processing grid).
        worker: Address of the worker that ran the task.
        pid: Its process id.
        backend: Backend that ran the model.
        device: Device it ran on.
        device_reason: Why that device was chosen.
        seconds: Wall-clock seconds of the task.
    """

    index: int
    classes_path: str
    heatmaps_path: str | None
    tiles: int
    tiles_run: int
    valid_pixel_count: int
    worker: str
    pid: int
    backend: str
    device: str
    device_reason: str
    seconds: float


def part_paths(parts_dir: Path, index: int, heatmaps: bool) -> tuple[Path, Path | None]:
    """The class (and heatmaps) part files of super-tile ``index``."""
    classes = parts_dir / f"part{index:06d}.classes.tif"
    return classes, (parts_dir / f"part{index:06d}.heatmaps.tif" if heatmaps else None)


class _WindowGrid:
    """The :class:`~engine.raster.writer.WriterSource` of one part: the window of the processing grid."""

    resampled = False
    has_geotransform = True  # a part is georeferenced like the processing grid it is cut from
    closed = True  # nothing to cut: the part is on the processing grid itself

    def __init__(self, source: RasterSource, window: Window) -> None:
        self.path = source.path
        self.height = self.input_height = int(window.height)
        self.width = self.input_width = int(window.width)
        self.transform: Affine = window_transform(window, source.processing_transform)
        self.processing_transform: Affine = self.transform
        self.crs: CRS | None = source.crs

    def read_input_valid(self, window: Window) -> NDArray[np.bool_]:
        raise NotImplementedError("a part is written on the processing grid; nothing is resampled")

    def check_unchanged(self) -> None:
        """Nothing to check here: the client checks the input once more before it assembles the outputs."""


class _EventProgress:
    """Progress of one task as Dask events to the client; canceled once the parts folder is gone."""

    def __init__(self, job: SuperTileJob) -> None:
        self._job = job
        self._parts = Path(job.parts_dir)
        self._worker = _current_worker()
        self._last = 0.0

    def set_progress(self, fraction: float) -> None:
        now = time.monotonic()
        if self._worker is None or now - self._last < _PROGRESS_INTERVAL_S:
            return
        self._last = now
        self._worker.log_event(self._job.run_id, {"index": self._job.index, "fraction": float(fraction)})

    def is_canceled(self) -> bool:
        return not self._parts.is_dir()


def run_super_tile(job: SuperTileJob) -> PartResult:
    """The task: segment one super-tile and write it as a part; returns what was done.

    Engine errors travel back to the client as the same error type and message, without their cause (a GDAL
    error does not always survive pickling, and Dask would then send a bare ``Exception``).

    Raises:
        CanceledError: If the run was canceled (its parts folder removed) before the part was in place.
        DistributedRunError: If this worker's engine version differs from the client's.
        BiCoRSegError: Bad input found on the worker (unreadable block, model missing), with the engine's message.
    """
    portable: BiCoRSegError | None = None
    try:
        return _run_super_tile(job)
    except BiCoRSegError as exc:
        try:
            portable = type(exc)(*exc.args)
        except TypeError:  # a subclass with another constructor: keep the message
            portable = DistributedRunError(str(exc))
    raise portable  # outside the handler: no cause, no context to pickle


def _run_super_tile(job: SuperTileJob) -> PartResult:
    started = time.perf_counter()
    if job.engine_version != __version__:
        raise DistributedRunError(
            f"Worker {_worker_address()} runs engine {__version__}, the client {job.engine_version}; install the "
            "same version of the package on every worker."
        )
    parts = Path(job.parts_dir)
    if not parts.is_dir():
        raise CanceledError("The distributed run was canceled; its parts folder is gone.")
    loaded = worker_model(job.model)
    card = loaded.file.card
    request = job.request
    window = Window(*job.window)
    progress = _EventProgress(job)
    classes_path, heatmaps_path = part_paths(parts, job.index, request.heatmaps_path is not None)
    with open_request_raster(request, card) as source:
        if not parts.is_dir():  # canceled while the model loaded: the writer would create the folder again
            raise CanceledError("The distributed run was canceled; its parts folder is gone.")
        grid = _WindowGrid(source, window)
        source.mirror_depth_px = mirror_depth_px(job.spec)  # the same grid and reads as a single-process run
        tags = {"part_of_run": job.run_id, "super_tile": str(job.index)}
        with SegmentationWriter(
            grid, classes_path, heatmaps_path, card, tags, require_valid_pixels=False,
            heatmap_dtype=request.heatmap_dtype,
        ) as writer:  # fmt: skip
            with WriteBehind(writer) as rows_out:
                stats = stitch_raster(
                    source,
                    rows_out,
                    loaded.predictor,
                    job.spec,
                    card.num_classes,
                    stitching=request.stitching,
                    batch_size=job.batch_size,
                    progress=progress,
                    region=window,
                    margins_px=request_margins(request, job.spec, source),
                )
            if progress.is_canceled():
                raise CanceledError("The distributed run was canceled; its parts folder is gone.")
            writer.commit()
    worker = _current_worker()
    return PartResult(
        index=job.index,
        classes_path=str(classes_path),
        heatmaps_path=None if heatmaps_path is None else str(heatmaps_path),
        tiles=stats.tile_count,
        tiles_run=stats.tiles_run,
        valid_pixel_count=stats.valid_pixel_count,
        worker=str(worker.address) if worker is not None else "local",
        pid=os.getpid(),
        backend=loaded.backend.name,
        device=loaded.backend.device,
        device_reason=loaded.backend.device_reason,
        seconds=time.perf_counter() - started,
    )

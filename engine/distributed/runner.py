"""The client side of a distributed run: plan super-tiles, run them on a Dask cluster, assemble, clean up.

:func:`segment_distributed` does what :func:`~engine.inference.pipeline.segment_raster` does, on a cluster:

1. the same checks before any work (output paths, model card, tiling, bands, extent, mask) on the client;
2. a plan of block-aligned super-tiles (:mod:`engine.distributed.plan`), one Dask task each
   (:func:`~engine.distributed.worker.run_super_tile`), carrying the model as a path and a SHA-256;
3. progress aggregated from the workers' events (and the finished tasks) into the caller's reporter;
4. the parts assembled into one class raster (and one heatmaps raster) by the engine's writer, moved into place
   once (:mod:`engine.distributed.assemble`);
5. whatever happens, the parts folder removed; on a failure, Ctrl-C, SIGTERM or a cancel the cluster's tasks are
   canceled first, and nothing is left at the output paths.

A worker that dies mid-run has its task rerun on another worker by the Dask scheduler (up to its
``distributed.scheduler.allowed-failures``); the rerun writes the same part, so the output does not change. A task
that fails for bad data fails the run with the engine's own one-line error.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..backends.threads import physical_core_count
from ..errors import (
    BackendUnavailableError,
    BiCoRSegError,
    CanceledError,
    DistributedRunError,
    InvalidInputError,
    InvalidRasterError,
)
from ..inference.pipeline import DEFAULT_BATCH_SIZE, open_request_raster, provenance_tags
from ..inference.request import SegmentationRequest, SegmentationResult, check_output_paths, resolve_tiling
from ..inference.tiling import TilingSpec, tile_count, tiles_touching
from ..model_file import ModelFile
from ..progress import NullProgress, ProgressReporter
from .assemble import assemble_parts
from .plan import DEFAULT_SUPER_TILE_PX, SuperTile, check_super_tile_size, plan_super_tiles, redundant_tile_share
from .worker import ModelRef, PartResult, SuperTileJob, run_super_tile

__all__ = ["ClusterOptions", "DistributedResult", "WorkerCounts", "connect", "segment_distributed"]

logger = logging.getLogger(__name__)

#: Share of the progress bar given to the super-tiles; the rest is assembling the outputs.
_TASKS_SHARE = 0.9
#: Seconds between two looks at the tasks.
_POLL_S = 0.1
#: Seconds to wait for a scheduler.
_CONNECT_TIMEOUT_S = 15


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how a distributed run runs.

    Attributes:
        workers: Start a local Dask cluster (``LocalCluster``) of this many worker processes, one task at a time
            each; or None to use ``scheduler``.
        scheduler: An existing cluster: ``tcp://HOST:PORT`` or the path of a scheduler file. Leave both None
            only when handing :func:`segment_distributed` a connected client.
        super_tile_px: Edge of a super-tile, a multiple of the output block size (256 px).
        upload_model: Send the model file to every worker once instead of reading it from a shared path.
    """

    workers: int | None = None
    scheduler: str | None = None
    super_tile_px: int = DEFAULT_SUPER_TILE_PX
    upload_model: bool = False

    def __post_init__(self) -> None:
        """Check that at most one of ``workers`` / ``scheduler`` is given."""
        if self.workers is not None and self.scheduler is not None:
            raise InvalidInputError("Give either --workers N (a local cluster) or --scheduler ADDRESS, not both.")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise InvalidInputError(f"--workers must be at least 1, got {self.workers!r}.")
        check_super_tile_size(self.super_tile_px)


@dataclass(frozen=True)
class WorkerCounts:
    """What one worker did in a run.

    Attributes:
        worker: The worker's address.
        tasks: Super-tiles it finished.
        tiles: Tiles of the global grid overlapping them.
        tiles_run: Tiles it sent through the model.
        valid_pixel_count: Valid pixels it produced (processing grid).
        seconds: Seconds it spent in its tasks.
    """

    worker: str
    tasks: int
    tiles: int
    tiles_run: int
    valid_pixel_count: int
    seconds: float


@dataclass(frozen=True)
class DistributedResult:
    """A finished distributed run.

    Attributes:
        result: What a single-process run reports (outputs, model, class counts on the input grid, ...).
        super_tile_px: Edge of the super-tiles.
        super_tiles: Number of super-tiles (tasks).
        tiles_computed: Tiles sent through the model, summed over the super-tiles.
        redundant_tile_share: Planned share of the grid's tiles computed twice (straddling super-tile borders).
        workers: Per-worker counts, by address.
        compute_s: Seconds until every part was finished.
        assemble_s: Seconds spent assembling the outputs.
        parts: What each super-tile's task reported, by index.
    """

    result: SegmentationResult
    super_tile_px: int
    super_tiles: int
    tiles_computed: int
    redundant_tile_share: float
    workers: tuple[WorkerCounts, ...]
    compute_s: float
    assemble_s: float
    parts: tuple[PartResult, ...] = ()


class _ReportedBackend:
    """Backend name and device as the workers reported them (for the provenance tags)."""

    def __init__(self, name: str, device: str, device_reason: str) -> None:
        self.name, self.device, self.device_reason = name, device, device_reason

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        raise NotImplementedError("the model runs on the workers")


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise BackendUnavailableError(
            "Distributed runs need Dask: pip install 'bicorseg-qgis[distributed]' (the dask and distributed "
            f"packages) on the client and on every worker ({exc})."
        ) from exc
    return distributed


#: Preload module of the local cluster's workers (they leave Ctrl-C to the client).
_WORKER_SETUP = f"{__package__}.worker_setup"
#: Dask's setting for the environment of the worker processes a nanny starts.
_PRE_SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"


def _worker_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """Dask's worker environment without ``MALLOC_TRIM_THRESHOLD_``.

    Dask sets it to 64 KiB so workers hand memory back to the system; that also turns off glibc's adaptive mmap
    threshold, so every tile-sized array is mmapped and faulted in afresh: measured 3x the page faults and +13 %
    CPU time for the same segmentation. The engine's memory is bounded by design, so workers keep glibc's default.
    """
    return {key: value for key, value in environ.items() if key != "MALLOC_TRIM_THRESHOLD_"}


@contextlib.contextmanager
def connect(options: ClusterOptions, num_threads: int | None = None) -> Iterator[tuple[Any, int | None]]:
    """A Dask client for ``options``: a new local cluster (closed on exit) or the given scheduler.

    Yields:
        ``(client, backend_threads)``: the client and the backend threads per worker to ask for (a local cluster
        shares this machine's cores among its workers; an existing cluster's workers decide for themselves).

    Raises:
        BackendUnavailableError: If Dask is not installed.
        DistributedRunError: If the local cluster cannot start or the scheduler cannot be reached.
        InvalidInputError: If ``scheduler`` is neither an address nor an existing scheduler file.
    """
    distributed = _import_distributed()
    import dask

    if options.workers is not None:
        threads = num_threads or max(1, physical_core_count() // options.workers)
        try:
            # Workers log nothing below CRITICAL: a failed or canceled task reaches the user once, as the run's
            # one-line error, not also as the worker's "Compute Failed" traceback on the same terminal.
            with dask.config.set({_PRE_SPAWN_ENVIRON: _worker_environ(dask.config.get(_PRE_SPAWN_ENVIRON, {}))}):
                cluster = distributed.LocalCluster(
                    n_workers=options.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                    silence_logs=logging.CRITICAL, host="127.0.0.1", preload=[_WORKER_SETUP],
                )  # fmt: skip
        except Exception as exc:  # distributed raises many kinds (OSError, TimeoutError, RuntimeError)
            raise DistributedRunError(
                f"Could not start a local Dask cluster of {options.workers} workers: {exc}."
            ) from exc
        try:
            with distributed.Client(cluster, set_as_default=False) as client:
                yield client, threads
        finally:
            cluster.close()
        return
    if options.scheduler is None:
        raise InvalidInputError("Give --workers N (a local cluster) or --scheduler ADDRESS (an existing one).")
    address = str(options.scheduler)
    kwargs: dict[str, Any] = {"timeout": f"{_CONNECT_TIMEOUT_S}s", "set_as_default": False}
    if "://" in address:
        kwargs["address"] = address
    elif Path(address).is_file():
        kwargs["scheduler_file"] = address
    else:
        raise InvalidInputError(
            f"--scheduler '{address}' is neither a scheduler address such as tcp://host:8786 nor an existing "
            "scheduler file; give the address the scheduler prints, or the file of `dask scheduler --scheduler-file`."
        )
    try:
        client = distributed.Client(**kwargs)
    except (OSError, TimeoutError, ValueError) as exc:
        raise DistributedRunError(
            f"Cannot reach the Dask scheduler at '{address}' ({exc}); start it (`dask scheduler`) or check the "
            "address and the firewall."
        ) from exc
    with client:
        yield client, num_threads


def segment_distributed(
    request: SegmentationRequest,
    options: ClusterOptions,
    progress: ProgressReporter | None = None,
    client: Any = None,
) -> DistributedResult:
    """Segment one raster on a Dask cluster, giving the same outputs as :func:`~engine.inference.pipeline.segment_raster`.

    Args:
        request: What to segment; input, model and output paths must be reachable from the workers (see
            docs/engine.md, "Scale-out on Dask").
        options: The cluster and the super-tile size.
        progress: Progress, messages and cancellation; silent if None.
        client: An already connected ``distributed.Client`` (``options.workers`` / ``scheduler`` are then
            ignored); tests and benchmarks reuse one cluster this way.

    Returns:
        The single-process result plus per-worker counts.

    Raises:
        InvalidInputError: For unusable options or input (the same checks and messages as a single-process run).
        OutputPathError: If an output cannot be written.
        DistributedRunError: If the cluster cannot be used or a task fails for a reason that is not bad input.
        CanceledError: On a cancel or SIGTERM; the cluster's tasks are canceled, nothing is left behind.
    """
    started = time.perf_counter()
    reporter = progress if progress is not None else NullProgress()
    check_output_paths(request)
    model = ModelFile.open(request.model_path)
    card = model.card
    spec = resolve_tiling(request, card)
    batch_size = request.batch_size or int(getattr(card, "batch_size", 0) or DEFAULT_BATCH_SIZE)
    with open_request_raster(request, card) as source:
        _check_supported(request, source.resampled)
        plan = plan_super_tiles(source.height, source.width, options.super_tile_px)
        redundancy = redundant_tile_share(source.height, source.width, spec, plan)
        output = Path(request.output_path)
        run_id = f"bicorseg-{uuid.uuid4().hex[:12]}"
        parts_dir = output.resolve().parent / f".{output.stem}.{run_id}.parts"
        with contextlib.ExitStack() as stack:
            # Registered first, so it runs last: after a local cluster is down no task can still write a part.
            stack.callback(_remove_tree, parts_dir)
            stack.enter_context(_sigterm_cancels())
            if client is None:
                client, threads = stack.enter_context(connect(options, request.num_threads))
            else:
                threads = request.num_threads
            parts_dir.mkdir()
            ref = _model_ref(client, model, request, threads, options.upload_model)
            jobs = [
                SuperTileJob(
                    index=tile.index,
                    window=(tile.col_off_px, tile.row_off_px, tile.width_px, tile.height_px),
                    request=request,
                    model=ref,
                    spec=spec,
                    batch_size=batch_size,
                    parts_dir=str(parts_dir),
                    run_id=run_id,
                )
                for tile in plan
            ]
            logger.info(
                "Segmenting %d super-tiles of %d px on %d Dask workers (+%.1f%% tile runs for the tiles straddling "
                "their borders).", len(plan), options.super_tile_px, len(client.scheduler_info().get("workers", {})),
                100 * redundancy,
            )  # fmt: skip
            parts = _run_tasks(client, jobs, plan, spec, source.height, source.width, parts_dir, reporter, run_id)
            compute_s = time.perf_counter() - started
            first = parts[plan[0].index]
            backends = sorted({(p.backend, p.device) for p in parts.values()})
            reported = _ReportedBackend(
                ",".join(sorted({b for b, _ in backends})),
                ",".join(sorted({d for _, d in backends})),
                first.device_reason,
            )
            tags = provenance_tags(request, card, model.sha256, spec, batch_size, reported)
            tags.update({"distributed": "dask", "super_tile_px": str(options.super_tile_px)})
            valid = sum(p.valid_pixel_count for p in parts.values())
            if valid == 0:
                raise InvalidRasterError(
                    f"Input raster '{request.input_path}' contains no valid pixels (all nodata, masked or outside "
                    "the extent); check its nodata value, bands, EXTENT and MASK."
                )
            assembling = time.perf_counter()
            rows_done = [0]

            def on_rows(rows: int) -> None:
                rows_done[0] += rows
                _check_canceled(reporter)
                reporter.set_progress(_TASKS_SHARE + (1 - _TASKS_SHARE) * 0.99 * rows_done[0] / source.height)

            counts = assemble_parts(
                source, plan, parts, output, request.heatmaps_path, card, tags, cog=request.cog, on_rows=on_rows,
                heatmap_dtype=request.heatmap_dtype,
            )  # fmt: skip
            assemble_s = time.perf_counter() - assembling
    reporter.set_progress(1.0)
    elapsed = time.perf_counter() - started
    result = SegmentationResult(
        output_path=output,
        heatmaps_path=None if request.heatmaps_path is None else Path(request.heatmaps_path),
        card=card,
        model_sha256=model.sha256,
        backend=reported.name,
        device=reported.device,
        device_reason=reported.device_reason,
        class_pixel_counts=tuple(int(c) for c in counts),
        valid_pixel_count=int(sum(counts)),
        tile_count=tile_count(source.height, source.width, spec),
        elapsed_s=elapsed,
    )
    return DistributedResult(
        result=result,
        super_tile_px=options.super_tile_px,
        super_tiles=len(plan),
        tiles_computed=sum(p.tiles_run for p in parts.values()),
        redundant_tile_share=redundancy,
        workers=_per_worker(parts.values()),
        compute_s=compute_s,
        assemble_s=assemble_s,
        parts=tuple(parts[tile.index] for tile in plan),
    )


def _model_ref(
    client: Any, model: ModelFile, request: SegmentationRequest, threads: int | None, upload: bool
) -> ModelRef:
    if upload:
        from .upload import ModelUpload

        client.register_plugin(ModelUpload(model.path.read_bytes(), model.sha256, model.path.suffix))
    return ModelRef(
        path=str(model.path),
        sha256=model.sha256,
        backend=request.backend,
        device=request.device,
        num_threads=threads,
        tta=request.tta,
        uploaded=upload,
    )


def _run_tasks(
    client: Any,
    jobs: list[SuperTileJob],
    plan: list[SuperTile],
    spec: TilingSpec,
    height: int,
    width: int,
    parts_dir: Path,
    reporter: ProgressReporter,
    run_id: str,
) -> dict[int, PartResult]:
    """Submit one task per super-tile, report progress until all are done; cancel them all on any way out."""
    weights = {tile.index: tiles_touching(height, width, spec, tile.window) for tile in plan}
    total = float(sum(weights.values()))
    fractions: dict[int, float] = {}
    lock = threading.Lock()

    def on_event(event: Any) -> None:
        message = event[1] if isinstance(event, tuple) and len(event) == 2 else event
        if isinstance(message, dict) and "index" in message:
            with lock:
                index = int(message["index"])
                fractions[index] = max(fractions.get(index, 0.0), float(message["fraction"]))

    client.subscribe_topic(run_id, on_event)
    futures = {
        job.index: client.submit(run_super_tile, job, key=f"{run_id}-supertile-{job.index}", pure=False, retries=0)
        for job in jobs
    }
    results: dict[int, PartResult] = {}
    try:
        while len(results) < len(futures):
            for index, future in futures.items():
                if index in results:
                    continue
                status = future.status
                if status == "finished":
                    results[index] = future.result()
                elif status in ("error", "cancelled", "lost"):
                    raise _task_error(future, plan[index], status)
            _check_canceled(reporter)
            with lock:
                done = sum(weights[i] * (1.0 if i in results else fractions.get(i, 0.0)) for i in weights)
            reporter.set_progress(_TASKS_SHARE * done / total)
            if len(results) < len(futures):
                time.sleep(_POLL_S)
    except BaseException:
        client.cancel(list(futures.values()), force=True)
        _remove_tree(parts_dir)  # running tasks see their parts folder gone and stop before writing anything
        raise
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(run_id)
    return results


def _task_error(future: Any, tile: SuperTile, status: str) -> BaseException:
    """The error to fail the run with: the engine's own for bad input, a one-line one otherwise."""
    where = (
        f"super-tile {tile.index} (rows {tile.row_off_px}-{tile.row_off_px + tile.height_px}, columns "
        f"{tile.col_off_px}-{tile.col_off_px + tile.width_px})"
    )
    if status != "error":
        return DistributedRunError(f"The cluster {status} the task of {where}; rerun, or check the scheduler's log.")
    exc = future.exception()
    if isinstance(exc, BiCoRSegError):
        return exc.with_traceback(None)
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return DistributedRunError(
            f"Every worker that ran {where} died (out of memory?); give the workers more memory, or use a smaller "
            "--super-tile."
        )
    detail = " ".join(str(exc).split())[:200]
    return DistributedRunError(
        f"The task of {where} failed on a worker ({type(exc).__name__}: {detail}); check that every worker has the "
        "same versions of the engine, numpy, rasterio and the backend, and can read the input."
    )


def _per_worker(parts: Any) -> tuple[WorkerCounts, ...]:
    by_worker: dict[str, list[PartResult]] = {}
    for part in parts:
        by_worker.setdefault(part.worker, []).append(part)
    return tuple(
        WorkerCounts(
            worker=worker,
            tasks=len(items),
            tiles=sum(p.tiles for p in items),
            tiles_run=sum(p.tiles_run for p in items),
            valid_pixel_count=sum(p.valid_pixel_count for p in items),
            seconds=round(sum(p.seconds for p in items), 3),
        )
        for worker, items in sorted(by_worker.items())
    )


def _check_canceled(progress: ProgressReporter) -> None:
    if progress.is_canceled():
        raise CanceledError(
            "Segmentation canceled by the user; the cluster's tasks were canceled and no output was written."
        )


@contextlib.contextmanager
def _sigterm_cancels() -> Iterator[None]:
    """Turn SIGTERM into a :class:`CanceledError` during the run (main thread, unless someone else handles it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield  # the caller handles SIGTERM itself
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise CanceledError("Stopped by SIGTERM; the cluster's tasks were canceled and no output was written.")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_tree(path: Path) -> None:
    """Remove the parts folder; retried, since a task being canceled may still be closing a file in it."""
    for attempt in range(20):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if attempt == 19:
                logger.warning("Could not remove the parts folder '%s': %s", path, exc)
                return
            time.sleep(0.05)


def _check_supported(request: SegmentationRequest, resampled: bool) -> None:
    """Refuse, before any task runs, what a distributed run cannot yet give exactly as one process does.

    Raises:
        InvalidInputError: Naming the option and the way out.
    """
    problems = []
    if resampled:
        problems.append(
            "the raster is not at the model's resolution (resample it first, e.g. gdalwarp -tr, or RESAMPLE false)"
        )
    if request.value_scaling != "card":
        problems.append(f"VALUE_SCALING {request.value_scaling} (rescale the raster first, or use card)")
    if request.hbis_heatmaps_path is not None:
        problems.append("HBIS_HEATMAPS (run those on one machine)")
    if request.vector_path is not None:
        problems.append("VECTOR_OUTPUT (polygonize the finished class raster with python -m engine on one machine)")
    if problems:
        raise InvalidInputError(
            "A distributed run (--workers / --scheduler) does not support " + "; ".join(problems) + "; run without "
            "--workers / --scheduler for these."
        )

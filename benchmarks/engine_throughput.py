"""Engine throughput: whole pipeline vs the model alone, ONNX Runtime vs PyTorch, and vs a naive baseline.

All measurements run side by side in one process on the same synthetic raster, model, tiles and overlap,
interleaved round-robin ``--repeats`` times (medians reported), so their ratios are fair even on a busy machine:

* ``model_alone``: ``backend.predict`` on the pipeline's own tiles, pre-read into memory (pure model time);
* ``pipeline``: :func:`engine.inference.pipeline.segment_raster` with the same loaded backend (read, normalise, batch,
  blend, argmax, write the class raster, optionally heatmaps);
* ``naive``: a Deepness-style loop: read each tile, run it, argmax per tile, paste the centre crop into a
  full-size uint8 array, write it at the end (no blending, no heatmaps, memory grows with the raster).

Throughput is raster megapixels per second of wall time. Usage::

    python -m benchmarks.engine_throughput --size 1024 --tile 256 --overlap 32 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from benchmarks.synthetic import (
    export_pointwise_model,
    export_registry_model,
    machine_info,
    save_results,
    write_synthetic_raster,
)
from engine.backends import load_backend
from engine.inference.pipeline import SegmentationRequest, segment_raster
from engine.inference.tiling import TilingSpec, core_window, iter_tile_windows
from engine.model_card import NODATA_CLASS, ModelCard
from engine.model_file import ModelFile
from engine.raster.reader import RasterSource


class TimedBackend:
    """Wraps a backend and adds up the seconds spent inside ``predict`` (the model's share of a run)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name, self.device, self.device_reason = backend.name, backend.device, backend.device_reason
        self.seconds = 0.0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.backend.predict(batch)
        finally:
            self.seconds += time.perf_counter() - started


def read_tiles(raster: Path, card: ModelCard, spec: TilingSpec) -> list[np.ndarray]:
    """The tiles the pipeline feeds the model, read once into memory."""
    with RasterSource.open(raster, card, resample_to_model_gsd=False) as source:
        return [source.read_tile(w)[0] for w in iter_tile_windows(source.height, source.width, spec)]


def time_model_alone(backend: Any, tiles: list[np.ndarray], batch_size: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(tiles), batch_size):
        backend.predict(np.stack(tiles[start : start + batch_size]))
    return time.perf_counter() - started


def time_pipeline(
    raster: Path, model: Path, backend: Any, folder: Path, spec: TilingSpec, batch: int, heat: bool, inside: list[float]
) -> float:
    """Time one pipeline run; append the seconds spent inside the model to ``inside``."""
    request = SegmentationRequest(
        raster, folder / "classes.tif", folder / "heat.tif" if heat else None, model_path=model,
        tile_size_px=spec.tile_size_px, overlap_px=spec.overlap_px, batch_size=batch, resample_to_model_gsd=False,
    )  # fmt: skip
    timed = TimedBackend(backend)
    started = time.perf_counter()
    segment_raster(request, backend=timed)
    elapsed = time.perf_counter() - started
    inside.append(timed.seconds)
    return elapsed


def time_naive(raster: Path, backend: Any, card: ModelCard, folder: Path, spec: TilingSpec) -> float:
    """Deepness-style: tile by tile, argmax per tile, centre crops pasted into a full-size array."""
    started = time.perf_counter()
    scale = card.input_value_range[1] - card.input_value_range[0]
    mean = np.asarray(card.norm_mean, np.float32)[:, None, None]
    std = np.asarray(card.norm_std, np.float32)[:, None, None]
    with rasterio.open(raster) as dataset:
        height, width, profile = dataset.height, dataset.width, dataset.profile
        labels_full = np.full((height, width), NODATA_CLASS, dtype=np.uint8)
        for window in iter_tile_windows(height, width, spec):
            raw = dataset.read(window=window, boundless=True, fill_value=0).astype(np.float32)
            tile = ((raw - card.input_value_range[0]) / scale - mean) / std
            labels = backend.predict(tile[None].astype(np.float32))[0].argmax(axis=0).astype(np.uint8)
            core = core_window(window, height, width, spec)
            r, c = int(core.row_off - window.row_off), int(core.col_off - window.col_off)
            labels_full[
                int(core.row_off) : int(core.row_off + core.height), int(core.col_off) : int(core.col_off + core.width)
            ] = labels[r : r + int(core.height), c : c + int(core.width)]
    profile.update(count=1, dtype="uint8", nodata=NODATA_CLASS)
    with rasterio.open(folder / "naive.tif", "w", **profile) as out:
        out.write(labels_full, 1)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = TilingSpec(args.tile, args.overlap)
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        folder = Path(tmp)
        raster = write_synthetic_raster(folder / "input.tif", args.size)
        if args.model == "pointwise":
            onnx_path, card = export_pointwise_model(folder, args.tile, args.overlap)
            checkpoint = None
        else:
            onnx_path, checkpoint, card = export_registry_model(args.model, folder, args.tile, args.overlap)
        backends: dict[str, Any] = {
            "onnxruntime": load_backend(ModelFile.open(onnx_path), "onnxruntime", "cpu", args.threads)
        }
        if checkpoint is not None and not args.skip_torch:
            backends["torch"] = load_backend(ModelFile.open(checkpoint), "torch", "cpu", args.threads)
        model_files = {"onnxruntime": onnx_path, "torch": checkpoint}
        tiles = read_tiles(raster, card, spec)
        for backend in backends.values():  # warm-up: first calls allocate and plan
            backend.predict(np.stack(tiles[: args.batch]))
        jobs: dict[str, Callable[[], float]] = {}
        model_seconds_inside: dict[str, list[float]] = {}
        for name, backend in backends.items():
            jobs[f"model_alone_{name}"] = lambda b=backend: time_model_alone(b, tiles, args.batch)
            model = model_files[name]
            assert model is not None
            for variant, heat in (("classes", False), ("classes_heatmaps", True)):
                inside = model_seconds_inside.setdefault(f"pipeline_{name}_{variant}", [])
                jobs[f"pipeline_{name}_{variant}"] = lambda b=backend, m=model, h=heat, i=inside: time_pipeline(
                    raster, m, b, folder, spec, args.batch, h, i
                )
        jobs["naive_onnxruntime"] = lambda: time_naive(raster, backends["onnxruntime"], card, folder, spec)
        seconds: dict[str, list[float]] = {name: [] for name in jobs}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(args.repeats):
            for name, job in jobs.items():
                cpu_started = time.process_time()  # all threads of this process: immune to other jobs' load
                seconds[name].append(job())
                cpu_seconds[name].append(time.process_time() - cpu_started)
    megapixels = args.size * args.size / 1e6
    median = {name: statistics.median(values) for name, values in seconds.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_seconds.items()}
    results: dict[str, Any] = {
        "benchmark": "engine_throughput",
        "command": "python -m benchmarks.engine_throughput " + " ".join(args.argv),
        "machine": machine_info(),
        "setup": {
            "raster_px": [args.size, args.size],
            "raster_mpx": megapixels,
            "model": args.model,
            "classes": card.num_classes,
            "tile_px": args.tile,
            "overlap_px": args.overlap,
            "batch": args.batch,
            "threads": args.threads,
            "tiles": len(tiles),
            "repeats": args.repeats,
            "stitching": "gaussian",
        },
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "seconds_all": {k: [round(v, 3) for v in vs] for k, vs in seconds.items()},
        "mpx_per_s": {k: round(megapixels / v, 4) for k, v in median.items()},
        "cpu_seconds_median": {k: round(v, 3) for k, v in cpu_median.items()},
        "cpu_seconds_all": {k: [round(v, 3) for v in vs] for k, vs in cpu_seconds.items()},
    }
    ratios: dict[str, float] = {}
    for name in backends:
        model_s = median[f"model_alone_{name}"]
        for variant in ("classes", "classes_heatmaps"):
            ratios[f"overhead_pct_{name}_{variant}"] = round(
                100 * (median[f"pipeline_{name}_{variant}"] / model_s - 1), 1
            )
    ratios["pipeline_heatmaps_vs_naive_speed"] = round(
        median["naive_onnxruntime"] / median["pipeline_onnxruntime_classes_heatmaps"], 3
    )
    if "torch" in backends:
        ratios["onnxruntime_vs_torch_model_speed"] = round(
            median["model_alone_torch"] / median["model_alone_onnxruntime"], 3
        )
        ratios["onnxruntime_vs_torch_pipeline_speed"] = round(
            median["pipeline_torch_classes_heatmaps"] / median["pipeline_onnxruntime_classes_heatmaps"], 3
        )
    # The same ratio inside each pipeline run (time outside predict / time inside it): immune to the run-to-run
    # swings of a shared machine, which the side-by-side ratio above is not.
    for job, inside in model_seconds_inside.items():
        paired = [total / model - 1 for total, model in zip(seconds[job], inside, strict=True)]
        ratios[f"in_run_overhead_pct_{job.removeprefix('pipeline_')}"] = round(100 * statistics.median(paired), 1)
    # CPU time (process_time, all threads) of the same jobs: how much work the engine adds, whatever else runs.
    for name in backends:
        for variant in ("classes", "classes_heatmaps"):
            job = f"pipeline_{name}_{variant}"
            ratios[f"cpu_overhead_pct_{name}_{variant}"] = round(
                100 * (cpu_median[job] / cpu_median[f"model_alone_{name}"] - 1), 1
            )
    ratios["cpu_pipeline_heatmaps_vs_naive_speed"] = round(
        cpu_median["naive_onnxruntime"] / cpu_median["pipeline_onnxruntime_classes_heatmaps"], 3
    )
    results["ratios"] = ratios
    results["targets"] = {
        "cpu_overhead_below_10_pct": all(v < 10 for k, v in ratios.items() if k.startswith("cpu_overhead")),
        "in_run_overhead_below_10_pct": all(v < 10 for k, v in ratios.items() if k.startswith("in_run_overhead")),
        "side_by_side_overhead_below_10_pct": all(v < 10 for k, v in ratios.items() if k.startswith("overhead_pct_")),
        "pipeline_with_heatmaps_at_least_naive_speed": ratios["pipeline_heatmaps_vs_naive_speed"] >= 1.0,
        "cpu_pipeline_with_heatmaps_at_least_naive_speed": ratios["cpu_pipeline_heatmaps_vs_naive_speed"] >= 1.0,
    }
    return results


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="raster edge in pixels")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="tiles per model call (1 is fastest on CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="hi_resnet_small", help="engine.models name, or 'pointwise'")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--quick", action="store_true", help="512 px raster, one repeat")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.size, args.repeats = 512, 1
    results = run(args)
    save_results("engine_throughput" + ("_quick" if args.quick else ""), results, args.out)


if __name__ == "__main__":
    main()

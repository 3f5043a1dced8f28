"""Engine throughput: the whole pipeline against the network alone and a naive baseline, side by side in one run.

Every job runs in a fresh subprocess (so each reports its own peak RSS), on the same synthetic raster, model,
tiles and overlap, interleaved round-robin ``--repeats`` times (medians reported), so their ratios are fair even
on a busy machine:

* ``network``: ``backend.predict`` on as many tiles as the pipeline runs, taken from the raster and held in memory
  (pure network time: no reading, no stitching, no writing);
* ``classes``: :func:`engine.inference.pipeline.segment_raster` writing the class raster (read, normalise, batch,
  blend, argmax, write);
* ``heatmaps``: the same plus the heatmaps (UInt16), ``heatmaps_uint8``: with the compact UInt8 encoding;
* ``naive``: a Deepness-style loop: read each tile, run it, argmax per tile, paste the centre crop into a
  full-size uint8 array, write it at the end (no blending, no heatmaps, memory grows with the raster);
* ``gemm``: the machine's matrix-multiply rate with the same threads (ONNX Runtime's MatMul on 2048 x 2048
  float32, and numpy's BLAS), so the network's achieved GFLOP/s can be read against it.

Throughput is raster megapixels per second of wall time. Usage::

    nice -n 0 env PYTHONPATH=. .venv/bin/python -m benchmarks.engine_throughput --model probe_unet \
        --size 8192 --tile 512 --overlap 77 --threads 2 --repeats 2
    PYTHONPATH=. .venv/bin/python -m benchmarks.engine_throughput --quick      # 1024 px, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.synthetic import (
    export_pointwise_model,
    export_probe_unet,
    export_registry_model,
    machine_info,
    save_results,
    write_synthetic_raster,
)

_REPO_ROOT = Path(__file__).resolve().parent.parent
#: GDAL block cache of the workers, in MB: what ``python -m engine`` sets (engine.cli.GDAL_CACHE_MB).
GDAL_CACHE_MB = 32
ENGINE_JOBS = {
    "classes": {},
    "heatmaps": {"heat": True},
    "heatmaps_uint8": {"heat": True, "heatmap_dtype": "uint8"},
    "classes_batch4": {"batch": 4},
    "heatmaps_batch4": {"heat": True, "batch": 4},
}
DEFAULT_JOBS = ["network", "classes", "heatmaps", "heatmaps_uint8", "naive", "gemm"]


class TimedBackend:
    """Wraps a backend and adds up the seconds spent inside ``predict`` (the network's share of a run)."""

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


# --- inside a worker process ---------------------------------------------------------------------------------


def _load(model: Path, threads: int) -> tuple[Any, Any]:
    from engine.backends import load_backend
    from engine.model_file import ModelFile

    model_file = ModelFile.open(model)
    return model_file, load_backend(model_file, "onnxruntime", "cpu", threads)


def _job_network(raster: Path, model: Path, tile: int, overlap: int, threads: int, batch: int) -> dict[str, Any]:
    """The network alone on as many tiles as the pipeline runs (8 distinct tiles of the raster, cycled)."""
    from engine.inference.tiling import TilingSpec, iter_tile_windows
    from engine.raster.reader import RasterSource

    model_file, backend = _load(model, threads)
    spec = TilingSpec(tile, overlap)
    with RasterSource.open(raster, model_file.card, resample_to_model_gsd=False) as source:
        windows = list(iter_tile_windows(source.height, source.width, spec))
        step = max(1, len(windows) // 8)
        tiles = [source.read_tile(w)[0] for w in windows[::step][:8]]
    backend.predict(np.stack(tiles[:batch]))  # warm-up: first calls allocate and plan
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(windows), batch):
        count = min(batch, len(windows) - start)
        backend.predict(np.stack([tiles[(start + i) % len(tiles)] for i in range(count)]))
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
            "tiles": len(windows)}  # fmt: skip


def _job_engine(
    raster: Path, model: Path, tile: int, overlap: int, threads: int, folder: Path, options: dict[str, Any]
) -> dict[str, Any]:
    from engine.inference.pipeline import SegmentationRequest, segment_raster

    model_file, backend = _load(model, threads)
    heat = folder / "heat.tif" if options.get("heat") else None
    extra = {k: v for k, v in options.items() if k not in ("heat", "batch")}
    request = SegmentationRequest(
        raster, folder / "classes.tif", heat, model_path=model, tile_size_px=tile, overlap_px=overlap,
        batch_size=options.get("batch"), resample_to_model_gsd=False, **extra,
    )  # fmt: skip
    tiles = np.zeros((1, 3, tile, tile), dtype=np.float32)
    backend.predict(tiles)  # warm-up, as for the network alone
    timed = TimedBackend(backend)
    started, cpu = time.perf_counter(), time.process_time()
    result = segment_raster(request, backend=timed, model=model_file)
    row = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
           "model_seconds": timed.seconds, "tiles": result.tile_count}  # fmt: skip
    if heat is not None:
        row["heatmaps_mb"] = round(heat.stat().st_size / 1e6, 1)
    row["classes_mb"] = round((folder / "classes.tif").stat().st_size / 1e6, 2)
    return row


def _job_naive(raster: Path, model: Path, tile: int, overlap: int, threads: int, folder: Path) -> dict[str, Any]:
    """Deepness-style: tile by tile, argmax per tile, centre crops pasted into a full-size array."""
    import rasterio

    from engine.inference.tiling import TilingSpec, core_window, iter_tile_windows
    from engine.model_card import NODATA_CLASS

    model_file, backend = _load(model, threads)
    card, spec = model_file.card, TilingSpec(tile, overlap)
    backend.predict(np.zeros((1, 3, tile, tile), dtype=np.float32))
    started, cpu = time.perf_counter(), time.process_time()
    scale = card.input_value_range[1] - card.input_value_range[0]
    mean = np.asarray(card.norm_mean, np.float32)[:, None, None]
    std = np.asarray(card.norm_std, np.float32)[:, None, None]
    tiles = 0
    with rasterio.open(raster) as dataset:
        height, width, profile = dataset.height, dataset.width, dataset.profile
        labels_full = np.full((height, width), NODATA_CLASS, dtype=np.uint8)
        for window in iter_tile_windows(height, width, spec):
            raw = dataset.read(window=window, boundless=True, fill_value=0).astype(np.float32)
            image = ((raw - card.input_value_range[0]) / scale - mean) / std
            labels = backend.predict(image[None].astype(np.float32))[0].argmax(axis=0).astype(np.uint8)
            tiles += 1
            core = core_window(window, height, width, spec)
            r, c = int(core.row_off - window.row_off), int(core.col_off - window.col_off)
            rows = slice(int(core.row_off), int(core.row_off + core.height))
            cols = slice(int(core.col_off), int(core.col_off + core.width))
            labels_full[rows, cols] = labels[r : r + int(core.height), c : c + int(core.width)]
    profile.update(count=1, dtype="uint8", nodata=NODATA_CLASS)
    with rasterio.open(folder / "naive.tif", "w", **profile) as out:
        out.write(labels_full, 1)
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu, "tiles": tiles}


def _job_gemm(threads: int, folder: Path, size: int = 2048) -> dict[str, Any]:
    """Matrix-multiply rate (2 size^3 FLOP per product) of ONNX Runtime's MatMul and of numpy's BLAS."""
    import onnx
    from onnx import TensorProto, helper

    from engine.model_file import _build_session

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = folder / "gemm.onnx"
    onnx.save(model, str(path))
    session = _build_session(path.read_bytes(), path, ["CPUExecutionProvider"], threads)
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    flop = 2.0 * size**3
    session.run(None, {"a": a, "b": a})

    def rate(run: Any) -> float:
        best = 0.0
        for _ in range(5):
            started = time.perf_counter()
            run()
            best = max(best, flop / (time.perf_counter() - started) / 1e9)
        return best

    return {"seconds": 0.0, "cpu_seconds": 0.0, "ort_matmul_gflops": rate(lambda: session.run(None, {"a": a, "b": a})),
            "numpy_matmul_gflops": rate(lambda: a @ a)}  # fmt: skip


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    job, folder = args.worker, Path(args.folder)
    common = (folder / "input.tif", Path(args.model_path), args.tile, args.overlap, args.threads)
    if job == "network":
        row = _job_network(*common, args.batch)
    elif job == "naive":
        row = _job_naive(*common, folder)
    elif job == "gemm":
        row = _job_gemm(args.threads, folder)
    else:
        out = folder / job
        out.mkdir(exist_ok=True)
        row = _job_engine(*common, out, ENGINE_JOBS[job])
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``), in MB.

    Not ``ru_maxrss``: Linux carries that over from the parent through fork and exec, so a worker started by a
    parent that imported torch would report at least the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- the parent ----------------------------------------------------------------------------------------------


def _spawn(job: str, folder: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    threads = str(args.threads)
    env = dict(os.environ, PYTHONPATH=str(_REPO_ROOT), OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    env.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))  # as python -m engine runs (GDAL's default is 5 % of RAM)
    command = [
        sys.executable, "-m", "benchmarks.engine_throughput", "--worker", job, "--folder", str(folder),
        "--model-path", str(model), "--tile", str(args.tile), "--overlap", str(args.overlap),
        "--threads", threads, "--batch", str(args.batch),
    ]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=_REPO_ROOT)
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(row[key] for row in rows))


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_throughput_", dir=args.tmp) as tmp:
        folder = Path(tmp)
        write_synthetic_raster(folder / "input.tif", args.size)
        model_info: dict[str, Any] = {"name": args.model}
        if args.model == "pointwise":
            model, card = export_pointwise_model(folder, args.tile, args.overlap)
        elif args.model == "probe_unet":
            model, card, counts = export_probe_unet(folder, args.tile, args.overlap)
            model_info |= counts
        else:
            model, _, card = export_registry_model(args.model, folder, args.tile, args.overlap)
        runs: dict[str, list[dict[str, Any]]] = {job: [] for job in args.jobs}
        for repeat in range(args.repeats):
            for job in args.jobs:
                row = _spawn(job, folder, model, args)
                runs[job].append(row)
                print(json.dumps({"repeat": repeat, "job": job, **row}), file=sys.stderr, flush=True)
    megapixels = args.size * args.size / 1e6
    timed = [job for job in args.jobs if job != "gemm"]
    median = {job: _median(runs[job], "seconds") for job in timed}
    cpu = {job: _median(runs[job], "cpu_seconds") for job in timed}
    rss = {job: max(row["peak_rss_mb"] for row in runs[job]) for job in args.jobs}
    results: dict[str, Any] = {
        "benchmark": "engine_throughput",
        "command": "python -m benchmarks.engine_throughput " + " ".join(args.argv),
        "machine": machine_info() | {"load_average_at_end": os.getloadavg(), "gdal_cachemax_mb": GDAL_CACHE_MB},
        "setup": {
            "raster_px": [args.size, args.size],
            "raster_mpx": megapixels,
            "model": model_info,
            "classes": card.num_classes,
            "tile_px": args.tile,
            "overlap_px": args.overlap,
            "batch": args.batch,
            "threads": args.threads,
            "repeats": args.repeats,
            "stitching": "gaussian",
        },
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "cpu_seconds_median": {k: round(v, 3) for k, v in cpu.items()},
        "mpx_per_s": {k: round(megapixels / v, 4) for k, v in median.items()},
        "peak_rss_mb": rss,
        "runs": runs,
    }
    ratios: dict[str, float] = {}
    if "network" in median:
        for job in timed:
            if job in ENGINE_JOBS:
                ratios[f"overhead_pct_{job}"] = round(100 * (median[job] / median["network"] - 1), 1)
                ratios[f"cpu_overhead_pct_{job}"] = round(100 * (cpu[job] / cpu["network"] - 1), 1)
                # The same ratio inside each run (time outside predict over time inside it): immune to the
                # run-to-run swings of a shared machine, which the side-by-side ratio above is not.
                paired = [row["seconds"] / row["model_seconds"] - 1 for row in runs[job]]
                ratios[f"in_run_overhead_pct_{job}"] = round(100 * statistics.median(paired), 1)
    if "naive" in median:
        for job in timed:
            if job in ENGINE_JOBS and ENGINE_JOBS[job].get("heat"):
                ratios[f"{job}_vs_naive_speed"] = round(median["naive"] / median[job], 3)
                ratios[f"{job}_vs_naive_rss"] = round(rss[job] / rss["naive"], 3)
    if "gemm" in runs and "network" in median and "gflop_per_tile" in model_info:
        tiles = runs["network"][0]["tiles"]
        achieved = model_info["gflop_per_tile"] * tiles / median["network"]
        ratios["network_gflops"] = round(achieved, 1)
        ratios["ort_gemm_gflops"] = round(max(row["ort_matmul_gflops"] for row in runs["gemm"]), 1)
        ratios["numpy_gemm_gflops"] = round(max(row["numpy_matmul_gflops"] for row in runs["gemm"]), 1)
        ratios["network_share_of_ort_gemm"] = round(achieved / ratios["ort_gemm_gflops"], 3)
    results["ratios"] = ratios
    results["targets"] = {
        "classes_overhead_at_most_3_pct": ratios.get("overhead_pct_classes", 1e9) <= 3,
        "heatmaps_overhead_at_most_5_pct": ratios.get("overhead_pct_heatmaps", 1e9) <= 5,
        "heatmaps_at_least_1.1x_naive_speed": ratios.get("heatmaps_vs_naive_speed", 0) >= 1.1,
        "heatmaps_rss_below_60_pct_of_naive": ratios.get("heatmaps_vs_naive_rss", 1e9) < 0.6,
    }
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="raster edge in pixels")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=77)
    parser.add_argument("--batch", type=int, default=1, help="tiles per call of the network-alone job")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="probe_unet", help="'probe_unet', 'pointwise' or an engine.models name")
    parser.add_argument(
        "--jobs", nargs="+", default=DEFAULT_JOBS, help="network, naive, gemm, " + ", ".join(ENGINE_JOBS)
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1024 px raster, one repeat")
    parser.add_argument("--tmp", default=None, help="folder for the temporary raster and outputs")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    if args.quick:
        args.size, args.repeats = 1024, 1
    results = run(args)
    name = f"engine_throughput_{args.model}_{args.size}" + ("_quick" if args.quick else "")
    save_results(name, results, args.out)


if __name__ == "__main__":
    main()

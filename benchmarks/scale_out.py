"""Scale-out on Dask against the single-process pipeline, at equal cores, on one synthetic raster.

Side by side in one run (so the ratios are fair on a busy machine), on the same raster, model, tiling and batch:

* ``single_2_threads``: :func:`engine.inference.pipeline.segment_raster`, one process, the backend on 2 threads;
* ``dask_2_workers_x_1_thread``: :func:`engine.distributed.segment_distributed` on a ``LocalCluster`` of 2 worker
  processes, the backend on 1 thread each;
* ``dask_1_worker_x_2_threads``: the same on 1 worker process, the backend on 2 threads.

The clusters are started before the clock starts (a user's cluster is usually already up); their start-up time is
reported separately. Each Dask timing includes the workers loading the model, planning, the tasks, writing the
parts and assembling the outputs, as each single-process timing includes loading the model and writing. With
``--repeats 2`` the second round runs in reverse order, so a drift in the machine's load hits every configuration
alike; medians are reported. Redundant work is reported as planned (tiles straddling super-tile borders) and as
measured (tiles the workers sent through the model against the single-process run). The outputs are compared: the
class rasters must be identical.

Usage::

    python -m benchmarks.scale_out --size 8192 --super-tile 4096
    python -m benchmarks.scale_out --quick        # 2048 px, super-tiles of 1024
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from benchmarks.synthetic import machine_info, save_results, write_synthetic_raster
from engine.backends.threads import physical_core_count
from engine.default_model import DEFAULT_MODEL_PATH
from engine.distributed import ClusterOptions, segment_distributed
from engine.distributed.runner import connect
from engine.inference.pipeline import SegmentationRequest, segment_raster
from engine.model_file import ModelFile

CONFIGS = ("single_2_threads", "dask_2_workers_x_1_thread", "dask_1_worker_x_2_threads")


def start_cluster(stack: contextlib.ExitStack, workers: int) -> tuple[Any, float]:
    """A local cluster started exactly as ``python -m engine segment --workers N`` starts it; its start-up seconds."""
    started = time.perf_counter()
    client, _ = stack.enter_context(connect(ClusterOptions(workers=workers)))
    client.wait_for_workers(workers)
    return client, time.perf_counter() - started


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cluster_cpu_seconds(client: Any) -> float:
    """User + system CPU seconds of the cluster's worker processes so far, summed."""
    return float(sum(client.run(cpu_seconds).values()))


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Whether two rasters hold the same values; the largest difference (block by block)."""
    largest = 0
    differing = 0
    with rasterio.open(a) as one, rasterio.open(b) as two:
        for _, window in one.block_windows(1):
            x = one.read(window=window).astype(np.int32)
            y = two.read(window=window).astype(np.int32)
            diff = np.abs(x - y)
            largest = max(largest, int(diff.max()))
            differing += int(np.count_nonzero(diff))
    return {"identical": differing == 0, "max_abs_diff": largest, "differing_values": differing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="raster edge in pixels")
    parser.add_argument("--super-tile", type=int, default=4096, help="super-tile edge (multiple of 256)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="ONNX model (default: embedded)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heatmaps", action="store_true", help="also write heatmaps")
    parser.add_argument("--repeats", type=int, default=1, help="rounds (the second in reverse order)")
    parser.add_argument("--quick", action="store_true", help="2048 px raster, super-tiles of 1024")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.size, args.super_tile = 2048, 1024
    os.environ.setdefault("GDAL_CACHEMAX", "32")  # as python -m engine does; inherited by the workers

    model = ModelFile.open(args.model)
    card = model.card
    with tempfile.TemporaryDirectory(prefix="bicorseg_scale_out_") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        raster = write_synthetic_raster(folder / "input.tif", args.size)
        raster_s = time.perf_counter() - started

        def request(name: str, threads: int) -> SegmentationRequest:
            return SegmentationRequest(
                raster, folder / f"{name}.tif", folder / f"{name}_heat.tif" if args.heatmaps else None,
                model_path=args.model, batch_size=args.batch, resample_to_model_gsd=False, num_threads=threads,
            )  # fmt: skip

        stack = contextlib.ExitStack()
        clusters: dict[str, tuple[Any, float]] = {}
        clusters["dask_2_workers_x_1_thread"] = start_cluster(stack, 2)
        clusters["dask_1_worker_x_2_threads"] = start_cluster(stack, 1)
        options = ClusterOptions(super_tile_px=args.super_tile)
        seconds: dict[str, list[float]] = {name: [] for name in CONFIGS}
        cpu: dict[str, list[float]] = {name: [] for name in CONFIGS}
        details: dict[str, dict[str, Any]] = {}
        with stack:
            for round_ in range(args.repeats):
                order = CONFIGS if round_ % 2 == 0 else tuple(reversed(CONFIGS))
                for name in order:
                    print(f"round {round_ + 1}: {name} ...", flush=True)
                    client = clusters[name][0] if name in clusters else None
                    c0 = cpu_seconds() + (cluster_cpu_seconds(client) if client is not None else 0.0)
                    t0 = time.perf_counter()
                    if client is None:
                        result = segment_raster(request(name, 2))
                        seconds[name].append(time.perf_counter() - t0)
                        cpu[name].append(cpu_seconds() - c0)
                        details[name] = {"tiles": result.tile_count, "tiles_run": result.tile_count}
                    else:
                        threads = 1 if name == "dask_2_workers_x_1_thread" else 2
                        run = segment_distributed(request(name, threads), options, client=client)
                        seconds[name].append(time.perf_counter() - t0)
                        cpu[name].append(cpu_seconds() + cluster_cpu_seconds(client) - c0)
                        details[name] = {
                            "super_tiles": run.super_tiles,
                            "tiles_computed": run.tiles_computed,
                            "planned_redundant_tile_share": round(run.redundant_tile_share, 4),
                            "compute_s": round(run.compute_s, 2),
                            "assemble_s": round(run.assemble_s, 2),
                            "workers": [
                                {"worker": w.worker, "tasks": w.tasks, "tiles_run": w.tiles_run, "seconds": w.seconds}
                                for w in run.workers
                            ],
                        }
            outputs = {name: compare(folder / "single_2_threads.tif", folder / f"{name}.tif") for name in CONFIGS[1:]}
            # The 2 x 1 thread workers run ONNX Runtime on 1 thread: compare them with one process on 1 thread too.
            print("reference: single process, 1 thread ...", flush=True)
            segment_raster(request("single_1_thread", 1))
            outputs["single_1_thread_vs_dask_2_workers_x_1_thread"] = compare(
                folder / "single_1_thread.tif", folder / "dask_2_workers_x_1_thread.tif"
            )
            if args.heatmaps:
                for name in CONFIGS[1:]:
                    outputs[f"{name}_heatmaps"] = compare(
                        folder / "single_2_threads_heat.tif", folder / f"{name}_heat.tif"
                    )

    median = {name: round(statistics.median(values), 2) for name, values in seconds.items()}
    single = median["single_2_threads"]
    single_tiles = details["single_2_threads"]["tiles_run"]
    cpu_median = {name: round(statistics.median(values), 2) for name, values in cpu.items()}
    ratios: dict[str, Any] = {}
    for name in CONFIGS[1:]:
        computed = details[name]["tiles_computed"]
        ratios[f"overhead_pct_{name}"] = round(100 * (median[name] / single - 1), 1)
        ratios[f"cpu_overhead_pct_{name}"] = round(100 * (cpu_median[name] / cpu_median["single_2_threads"] - 1), 1)
        ratios[f"cpu_overhead_pct_per_tile_run_{name}"] = round(
            100 * ((cpu_median[name] / computed) / (cpu_median["single_2_threads"] / single_tiles) - 1), 1
        )
        # The same per tile sent through the model: the overhead that is not the redundant border tiles.
        per_tile = (median[name] / computed) / (single / single_tiles)
        ratios[f"overhead_pct_per_tile_run_{name}"] = round(100 * (per_tile - 1), 1)
        ratios[f"measured_redundant_tile_share_{name}"] = round(computed / single_tiles - 1, 4)
    flags = {"size": args.size, "super-tile": args.super_tile, "batch": args.batch, "repeats": args.repeats}
    command = "python -m benchmarks.scale_out " + " ".join(f"--{k} {v}" for k, v in flags.items())
    command += " --heatmaps" if args.heatmaps else ""
    results = {
        "benchmark": "scale_out",
        "command": command,
        "machine": machine_info(),
        "physical_cores": physical_core_count(),
        "load_average_at_end": os.getloadavg(),
        "setup": {
            "raster_px": [args.size, args.size],
            "raster_mpx": round(args.size * args.size / 1e6, 2),
            "model": card.name,
            "architecture": card.architecture,
            "classes": card.num_classes,
            "tile_px": card.tile_size_px,
            "overlap_px": card.overlap_px,
            "batch": args.batch,
            "super_tile_px": args.super_tile,
            "heatmaps": args.heatmaps,
            "repeats": args.repeats,
            "raster_write_s": round(raster_s, 1),
            "cluster_start_s": {name: round(c[1], 2) for name, c in clusters.items()},
        },
        "seconds_median": median,
        "seconds_all": {name: [round(v, 2) for v in values] for name, values in seconds.items()},
        "cpu_seconds_median": cpu_median,
        "cpu_seconds_all": {name: [round(v, 2) for v in values] for name, values in cpu.items()},
        "mpx_per_s": {name: round(args.size * args.size / 1e6 / s, 3) for name, s in median.items()},
        "ratios": ratios,
        "details": details,
        "outputs_vs_single": outputs,
        "note": "2 shared CPU cores (other jobs running): absolute times are noisy; configurations ran side by side.",
    }
    save_results("scale_out", results, args.out)


if __name__ == "__main__":
    main()

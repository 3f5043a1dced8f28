"""Engine memory: peak resident memory (RSS) of a whole segmentation run versus raster size.

Each size runs through the command line (``engine.cli.main``, which caps GDAL's block cache at 32 MB unless
``GDAL_CACHEMAX`` is set) in a fresh subprocess (the input raster is made in another one first, so its creation does not
count), which reports its own ``ru_maxrss``. The model is a 1x1 convolution so the run is dominated by the
engine's own reading, stitching and writing (classes and 6-class heatmaps). The engine keeps one strip of
``(K + 1) x tile x width`` float32, so memory should grow with the raster's width, never with its area.

Usage::

    python -m benchmarks.engine_memory                      # 2048, 8192, 20480 px squares
    python -m benchmarks.engine_memory --quick              # 1024, 2048, 4096
    python -m benchmarks.engine_memory --sizes 2048 4096 --tile 512 --overlap 64
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.synthetic import export_pointwise_model, machine_info, save_results, write_synthetic_raster
from engine.cli import GDAL_CACHE_MB

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _child_run(
    folder: Path, size: int, tile: int, overlap: int, heatmaps: bool, heatmap_dtype: str = "uint16"
) -> dict[str, Any]:
    """Inside the subprocess: segment the raster and report peak RSS."""
    from engine.cli import main as cli_main
    from engine.model_card import read_card

    model = folder / "pointwise.onnx"  # made with the raster, so this process never imports torch
    card = read_card(model)
    argv = [
        "segment", str(folder / "input.tif"), "-o", str(folder / "classes.tif"), "--model", str(model),
        "--backend", "onnxruntime", "--device", "cpu", "--threads", "1", "--no-resample", "-q", "--json",
        "--tile-size", str(tile), "--overlap", str(overlap),
    ]  # fmt: skip
    if heatmaps:
        argv += ["--heatmaps", str(folder / "heat.tif"), "--heatmap-dtype", heatmap_dtype]
    started = time.perf_counter()
    summary = io.StringIO()
    code = cli_main(argv, stdout=summary, stderr=io.StringIO())
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"segmentation failed with exit code {code}")
    tiles = json.loads(summary.getvalue())["tiles"]
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {
        "size_px": size,
        "raster_mpx": size * size / 1e6,
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "seconds": round(seconds, 2),
        "tiles": tiles,
        "gdal_cachemax": os.environ.get("GDAL_CACHEMAX"),
        "strip_mb": round((card.num_classes + 1) * tile * size * 4 / 2**20, 1),
    }


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(_REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.engine_memory", *args],
        check=True, capture_output=True, text=True, env=env, cwd=_REPO_ROOT,
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    variants = {"classes": [], "classes_heatmaps": ["--heatmaps"]}
    if args.uint8:
        variants["classes_heatmaps_uint8"] = ["--heatmaps", "--heatmap-dtype", "uint8"]
    if args.no_heatmaps:
        del variants["classes_heatmaps"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench_memory_", dir=args.tmp) as tmp:
            tiling = ["--tile", str(args.tile), "--overlap", str(args.overlap)]
            _python("--make-raster", str(size), "--folder", tmp, *tiling)
            for name, extra in variants.items():
                done = _python("--child", str(size), "--folder", tmp, *tiling, *extra)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                runs[name].append(row)
                print(json.dumps({"variant": name, **row}), file=sys.stderr)
    growth = {name: round(rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"], 1) for name, rows in runs.items()}
    return {
        "benchmark": "engine_memory",
        "command": "python -m benchmarks.engine_memory " + " ".join(args.argv),
        "machine": machine_info(),
        "setup": {
            "model": "pointwise 1x1 conv, 6 classes (ONNX Runtime, 1 thread)",
            "tile_px": args.tile,
            "overlap_px": args.overlap,
            "stitching": "gaussian",
            "gdal_cachemax_mb": f"{GDAL_CACHE_MB} (python -m engine default)",
        },
        "runs": runs,
        "rss_growth_mb_smallest_to_largest": growth,
        "targets": {f"rss_growth_below_300_mb_{name}": value < 300 for name, value in growth.items()},
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 20480], help="square raster edges")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--no-heatmaps", action="store_true", help="measure only the classes-only runs")
    parser.add_argument("--quick", action="store_true", help="sizes 1024 2048 4096")
    parser.add_argument("--tmp", default=None, help="folder for the temporary rasters (needs ~3 GB at 20480)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--make-raster", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--heatmaps", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--heatmap-dtype", default="uint16", help=argparse.SUPPRESS)
    parser.add_argument("--uint8", action="store_true", help="also measure UInt8 heatmaps")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.make_raster:
        write_synthetic_raster(args.folder / "input.tif", args.make_raster)
        export_pointwise_model(args.folder, args.tile, args.overlap)
        return
    if args.child:
        row = _child_run(args.folder, args.child, args.tile, args.overlap, args.heatmaps, args.heatmap_dtype)
        print(json.dumps(row))
        return
    if args.quick:
        args.sizes = [1024, 2048, 4096]
    save_results(f"engine_memory_tile{args.tile}" + ("_quick" if args.quick else ""), run(args), args.out)


if __name__ == "__main__":
    main()

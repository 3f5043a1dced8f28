"""Vector output: peak resident memory (RSS) and time of polygonizing a class raster, versus its size.

A generated class raster (5 classes: 64 px blocks of random classes, so neighbouring blocks of one class merge into
larger regions, plus one 1-3 px island every 4096 px, and a 64-row nodata band at the top) is written strip by strip
in one subprocess; each measurement then runs :func:`engine.raster.vectorize.write_class_polygons` (what
``--vector`` runs on the finished class raster) in a fresh subprocess that reports its own ``ru_maxrss`` and its RSS
before the call (after the imports), with ``GDAL_CACHEMAX`` 32 MB as ``python -m engine`` sets it. Two variants per
size: no sieve, and ``--min-area`` = 16 pixels (the sieve pass too).

Usage::

    python -m benchmarks.vector_output                 # 2048, 8192, 20000 px squares
    python -m benchmarks.vector_output --quick         # 1024, 2048
    python -m benchmarks.vector_output --sizes 8192 --block 8   # many small regions (about 1 per 80 px)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.synthetic import CLASSES, COLOURS, machine_info, save_results

_REPO_ROOT = Path(__file__).resolve().parent.parent
#: Edge of the random class blocks, pixels between islands, and the nodata band, in pixels.
BLOCK_PX = 64
ISLAND_EVERY_PX = 4096
NODATA_ROWS = 64
PIXEL_M = 0.5
NUM_CLASSES = 5


def write_class_raster(
    path: Path, size_px: int, strip_rows: int = 512, seed: int = 0, block_px: int = BLOCK_PX
) -> Path:
    """The generated class raster (see the module docstring), written strip by strip in bounded memory."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, NUM_CLASSES, size=(-(-size_px // block_px), -(-size_px // block_px)), dtype=np.uint8)
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": size_px, "width": size_px, "count": 1, "dtype": "uint8", "nodata": 255,
        "crs": "EPSG:32640", "transform": from_origin(500000.0, 2800000.0, PIXEL_M, PIXEL_M),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    columns = np.arange(size_px) // block_px
    with rasterio.open(path, "w", **profile) as dataset:
        for row in range(0, size_px, strip_rows):
            rows = min(strip_rows, size_px - row)
            strip = blocks[(np.arange(row, row + rows) // block_px)[:, None], columns[None, :]]
            count = rows * size_px // ISLAND_EVERY_PX
            ys = rng.integers(0, rows - 3, count)
            xs = rng.integers(0, size_px - 3, count)
            sizes = rng.integers(1, 4, count)
            values = rng.integers(0, NUM_CLASSES, count, dtype=np.uint8)
            for y, x, s, v in zip(ys, xs, sizes, values, strict=True):
                strip[y : y + 1, x : x + s] = v  # 1-3 px islands (some land on their own class and vanish)
            if row < NODATA_ROWS:
                strip[: NODATA_ROWS - row] = 255
            dataset.write(strip, 1, window=Window(0, row, size_px, rows))
    return path


def _rss_now_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child_run(folder: Path, size: int, min_area_m2: float) -> dict[str, Any]:
    """Inside the subprocess: polygonize the class raster and report memory and time."""
    os.environ.setdefault("GDAL_CACHEMAX", "32")  # as python -m engine sets it
    from engine.model_card import ModelCard
    from engine.raster.vectorize import VectorOutput, write_class_polygons

    card = ModelCard(name="benchmark", architecture="external", class_names=CLASSES[:NUM_CLASSES],
                     class_colors=COLOURS[:NUM_CLASSES])  # fmt: skip
    destination = folder / f"polygons_{int(min_area_m2)}.gpkg"
    before_mb = _rss_now_mb()
    started = time.perf_counter()
    temps: list[Path] = []
    stats = write_class_polygons(folder / "classes.tif", destination, VectorOutput(destination, min_area_m2), card,
                                 folder, "bench", temps=temps)  # fmt: skip
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    for temp in temps:
        temp.unlink(missing_ok=True)
    return {
        "size_px": size,
        "raster_mpx": round(size * size / 1e6, 2),
        "min_area_m2": min_area_m2,
        "sieve_threshold_px": stats.sieve_threshold_px,
        "polygons": stats.feature_count,
        "rss_before_mb": round(before_mb, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "growth_mb": round(peak_mb - before_mb, 1),
        "seconds": round(seconds, 1),
        "output_mb": round(destination.stat().st_size / 1e6, 1),
        "gdal_cachemax": os.environ.get("GDAL_CACHEMAX"),
    }


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(_REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.vector_output", *args],
        check=True, capture_output=True, text=True, env=env, cwd=_REPO_ROOT,
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    min_areas = [0.0, 16 * PIXEL_M * PIXEL_M]
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench_vector_", dir=args.tmp) as tmp:
            _python("--make-raster", str(size), "--folder", tmp, "--block", str(args.block))
            for min_area in min_areas:
                done = _python("--child", str(size), "--folder", tmp, "--min-area", str(min_area))
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    largest = max(args.sizes)
    return {
        "benchmark": "vector_output",
        "command": "python -m benchmarks.vector_output " + " ".join(args.argv),
        "machine": machine_info(),
        "setup": {
            "class_raster": f"{NUM_CLASSES} classes, {args.block} px random blocks, a 1-3 px island every "
            f"{ISLAND_EVERY_PX} px, {NODATA_ROWS} nodata rows, {PIXEL_M} m pixels, EPSG:32640",
            "what_runs": "engine.raster.vectorize.write_class_polygons (sieve if min_area > 0, GDAL polygonize "
            "into a scratch GeoPackage, attribute pass into the destination GeoPackage)",
            "gdal_cachemax_mb": 32,
        },
        "runs": rows,
        "peak_rss_mb_at_largest": {
            f"min_area_{r['min_area_m2']}": r["peak_rss_mb"] for r in rows if r["size_px"] == largest
        },
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 20000], help="square raster edges")
    parser.add_argument("--quick", action="store_true", help="sizes 1024 2048")
    parser.add_argument(
        "--block", type=int, default=BLOCK_PX, help="edge of the random class blocks (fewer px: more regions)"
    )
    parser.add_argument("--tmp", default=None, help="folder for the temporary files")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--make-raster", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--min-area", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.make_raster:
        write_class_raster(args.folder / "classes.tif", args.make_raster, block_px=args.block)
        return
    if args.child:
        print(json.dumps(_child_run(args.folder, args.child, args.min_area)))
        return
    if args.quick:
        args.sizes = [1024, 2048]
    name = (
        "vector_output" + ("_quick" if args.quick else "") + ("" if args.block == BLOCK_PX else f"_block{args.block}")
    )
    save_results(name, run(args), args.out)


if __name__ == "__main__":
    main()

"""Tile sizes larger than the raster: wall and CPU time of each against the card's default, side by side in one run.

The embedded default model (256 px tiles) on a 700 x 700 px RGB raster at its own 2 m resolution (0.5 Mpx, no
resampling), with ``--tile-size`` left to the card and set to 4096 and 100000 px; each run in-process through
``segment_raster``, the variants interleaved round-robin ``--repeats`` times, medians reported. A run that fails
(the 112 GiB allocation before tiles were clamped) is recorded with its error.

Usage: PYTHONPATH=. .venv/bin/python -m benchmarks.tile_clamp [--repeats 3] [--threads 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

from engine.inference.pipeline import SegmentationRequest, segment_raster

REPO = Path(__file__).resolve().parents[1]
SIZE_PX = 700
TILE_SIZES: tuple[int | None, ...] = (None, 4096, 100_000)


def make_raster(path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(3, SIZE_PX, SIZE_PX), dtype=np.uint8)
    profile = {"driver": "GTiff", "count": 3, "height": SIZE_PX, "width": SIZE_PX, "dtype": "uint8",
               "crs": "EPSG:32640", "transform": from_origin(500000, 2800000, 2.0, 2.0), "tiled": True}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def run_once(raster: Path, out: Path, tile: int | None, threads: int) -> dict[str, Any]:
    request = SegmentationRequest(raster, out, tile_size_px=tile, device="cpu", num_threads=threads)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        segment_raster(request)
    except MemoryError as exc:
        return {"error": f"MemoryError: {exc}"[:200]}
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with rasterio.open(out) as dataset:
        used = int(dataset.tags()["tile_size_px"])
    out.unlink()
    return {"wall_s": wall, "cpu_s": cpu, "tile_size_px_used": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tile_clamp.json")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {str(t): [] for t in TILE_SIZES}
    with tempfile.TemporaryDirectory() as folder:
        raster = make_raster(Path(folder) / "half_mp.tif")
        for _ in range(args.repeats):
            for tile in TILE_SIZES:
                runs[str(tile)].append(run_once(raster, Path(folder) / "classes.tif", tile, args.threads))
    summary: dict[str, Any] = {}
    for tile, results in runs.items():
        ok = [r for r in results if "error" in r] == []
        summary[tile] = (
            {
                "wall_s_median": statistics.median(r["wall_s"] for r in results),
                "cpu_s_median": statistics.median(r["cpu_s"] for r in results),
                "tile_size_px_used": results[0]["tile_size_px_used"],
            }
            if ok
            else {"error": next(r["error"] for r in results if "error" in r)}
        )
    default = summary["None"]
    for tile in map(str, TILE_SIZES[1:]):
        if "error" not in summary[tile]:
            summary[tile]["wall_vs_default"] = summary[tile]["wall_s_median"] / default["wall_s_median"]
            summary[tile]["cpu_vs_default"] = summary[tile]["cpu_s_median"] / default["cpu_s_median"]
    report = {"raster_px": [SIZE_PX, SIZE_PX], "threads": args.threads, "repeats": args.repeats,
              "summary": summary, "runs": runs}  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Cost of a resampled run: classes only and classes + heatmaps, the embedded default model, side by side in one run.

A 3072 x 3072 px RGB raster at 1 m for the 2 m default model (processing grid 1536 x 1536 px), so the outputs
are resampled back to the input grid: since issue 12 the class raster is the argmax of the resampled
probabilities, so a classes-only run also keeps and resamples the probabilities. Best of ``--repeats``
interleaved runs (wall and CPU seconds, all threads of the process).

Usage: PYTHONPATH=. .venv/bin/python -m benchmarks.resample_back [--repeats 2] [--size 3072] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

from engine.inference.pipeline import SegmentationRequest, segment_raster

REPO = Path(__file__).resolve().parents[1]


def make_raster(path: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, size=(3, -(-size // 16), -(-size // 16)), dtype=np.uint8)
    image = np.kron(blocks, np.ones((1, 16, 16), np.uint8))[:, :size, :size]
    profile = {"driver": "GTiff", "count": 3, "height": size, "width": size, "dtype": "uint8", "crs": "EPSG:32640",
               "transform": from_origin(500000, 2800000, 1.0, 1.0), "tiled": True, "compress": "deflate"}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "resample_back.json")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"classes": [], "classes_and_heatmaps": []}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        raster = make_raster(folder / "in.tif", args.size)
        for _ in range(args.repeats):
            for variant, heatmaps in (("classes", None), ("classes_and_heatmaps", folder / "h.tif")):
                request = SegmentationRequest(
                    raster, folder / "c.tif", heatmaps, device="cpu", num_threads=args.threads
                )
                wall, cpu = time.perf_counter(), time.process_time()
                segment_raster(request)
                runs[variant].append({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
                for path in folder.glob("[ch].tif*"):
                    path.unlink()
    best: dict[str, Any] = {
        variant: {"wall_s": min(r["wall_s"] for r in results), "cpu_s": min(r["cpu_s"] for r in results)}
        for variant, results in runs.items()
    }
    report = {"input_px": [args.size, args.size], "threads": args.threads, "best": best, "runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

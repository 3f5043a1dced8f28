"""Fine-tuning on a user's labels: base default model vs fine-tuned vs the same architecture from scratch.

The scene is a Dubai tile the default model never trained on (tile 1, its test tile; tile 3, its validation tile,
with ``--tiles 1 3``), laid out 3 x 3 from its nine parts at the default model's training resolution (half size,
2 m nominal). Labels are the mask's class polygons of the six off-diagonal parts (``python -m training.finetune``
holds a spatially separate 20 % of them out for validation and checkpoint choice); the three diagonal parts are the
evaluation area, used by nothing but the scores here (each part is a separate area of the tile; the diagonal spreads
the evaluation over the tile's scenes, where a row or column of parts would hold classes the labels barely have). For each time budget (``--minutes 5 10 20``) the default model
is fine-tuned (``training.finetune``, BASE_MODEL empty) and ``bicorseg_small`` is trained from scratch on the same
chips; the runs go two at a time, one torch thread each, so both arms share the machine alike. Every model, and the
base model, segments the evaluation area through the engine (``engine.segment_raster``, the plugin's path) and is
scored against the reference mask (mIoU over the five classes).

Usage: PYTHONPATH=. nice .venv/bin/python -m benchmarks.finetune [--minutes 5 10 20] [--tiles 1] [--jobs 2]
Results: benchmarks/results/finetune.json (rewritten after every run, so a partial run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from benchmarks.dubai_scene import CLASS_NAMES, build_scene, reference_window, trace_polygons, write_polygons

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "finetune.json"
TARGET_POINTS = 10.0
TARGET_MINUTES = 15.0

logger = logging.getLogger("benchmarks.finetune")


def _score(model: Path | None, raster: Path, windows: list[Any], scene: Any, work: Path, threads: int) -> dict:
    """Segment the raster with ``model`` (None = default) through the engine and score the evaluation windows."""
    from engine import SegmentationRequest, segment_raster
    from engine.evaluation.metrics import SegmentationMetrics, confusion_matrix

    output = work / f"seg_{(model.stem if model else 'base')}_{time.monotonic_ns()}.tif"
    request = SegmentationRequest(input_path=raster, output_path=output, model_path=model, device="cpu",
                                  backend="onnxruntime", num_threads=threads)  # fmt: skip
    started = time.monotonic()
    segment_raster(request)
    seconds = time.monotonic() - started
    cm = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=np.int64)
    with rasterio.open(output) as src:
        for window in windows:
            predicted = src.read(1, window=window)
            reference = reference_window(scene, window)
            valid = predicted != 255
            cm += confusion_matrix(predicted[valid], reference[valid], len(CLASS_NAMES), ignore_index=255)
    output.unlink()
    metrics = SegmentationMetrics.from_confusion(cm, CLASS_NAMES)
    return {"miou": round(metrics.miou, 4), "oa": round(metrics.oa, 4), "segment_seconds": round(seconds, 1),
            "iou": {n: round(v, 4) for n, v in zip(CLASS_NAMES, metrics.iou, strict=True)}}  # fmt: skip


def _train(kind: str, minutes: float, scene_dir: Path, threads: int) -> dict[str, Any]:
    """One ``python -m training.finetune`` run in a subprocess; returns its JSON summary."""
    model = scene_dir / f"{kind}_{minutes:g}min.onnx"
    command = [sys.executable, "-m", "training.finetune", "--raster", str(scene_dir / "scene.tif"),
               "--labels", str(scene_dir / "labels.gpkg"), "--class-field", "class", "-o", str(model),
               "--minutes", f"{minutes:g}", "--device", "cpu", "--threads", str(threads)]  # fmt: skip
    if kind == "scratch":
        command += ["--architecture", "bicorseg_small"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    log = scene_dir / f"{kind}_{minutes:g}min.log"
    started = time.monotonic()
    with log.open("w") as handle:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=handle, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {minutes} min failed ({proc.returncode}); see {log}")
    summary: dict[str, Any] = json.loads(proc.stdout)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    summary["model_path"] = str(model)
    return summary


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[1])
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (one torch thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bicorseg-finetune-benchmark"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results: dict[str, Any] = {
        "benchmark": "finetune",
        "command": "PYTHONPATH=. nice .venv/bin/python -m benchmarks.finetune " + " ".join(argv or sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "threads_per_run": args.threads,
        "parallel_runs": args.jobs,
        "load_average_start": _load(),
        "target": f"fine-tuned >= base + {TARGET_POINTS:g} mIoU points within {TARGET_MINUTES:g} minutes",
        "scenes": {},
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results["load_average_now"] = _load()
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")

    for tile in args.tiles:
        scene_dir = args.work / f"tile{tile}"
        scene = build_scene(tile, scene_dir)
        (scene_dir / "scene.tif").unlink(missing_ok=True)
        scene.raster.rename(scene_dir / "scene.tif")
        raster = scene_dir / "scene.tif"
        parts = [(r, c) for r in range(3) for c in range(3)]
        evaluation = [scene.part_window(r, c) for r, c in parts if r == c]
        labels = [shape for r, c in parts if r != c for shape in trace_polygons(scene, scene.part_window(r, c))]
        write_polygons(scene_dir / "labels.gpkg", labels)
        entry: dict[str, Any] = {
            "raster_px": list(scene.classes.shape[::-1]),
            "label_polygons": len(labels),
            "labels": "the six off-diagonal parts of the 3 x 3 layout; 20 % held out automatically for validation",
            "evaluation": "the three diagonal parts, never trained or validated on",
            "evaluation_labelled_px": int(sum((reference_window(scene, w) != 255).sum() for w in evaluation)),
            "runs": [],
        }
        results["scenes"][f"tile{tile}"] = entry
        entry["base"] = _score(None, raster, evaluation, scene, scene_dir, args.threads)
        logger.info("tile %d base: %s", tile, entry["base"])
        save()
        jobs = [(kind, minutes) for minutes in args.minutes for kind in ("finetune", "scratch")]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [(kind, minutes, pool.submit(_train, kind, minutes, scene_dir, args.threads))
                       for kind, minutes in jobs]  # fmt: skip
            for kind, minutes, future in futures:
                summary = future.result()
                scored = _score(Path(summary["model_path"]), raster, evaluation, scene, scene_dir, args.threads)
                run = {"kind": kind, "minutes": minutes, "steps": summary["steps"],
                       "train_seconds": summary["train_seconds"], "wall_seconds": summary["wall_seconds"],
                       "val_miou": summary["val_miou"], "baseline_val_miou": summary["baseline_val_miou"],
                       "evaluation": scored,
                       "points_over_base": round(100 * (scored["miou"] - entry["base"]["miou"]), 1),
                       "load_average": _load()}  # fmt: skip
                entry["runs"].append(run)
                logger.info("tile %d %s %g min: %s", tile, kind, minutes, run)
                save()
        within = [r for r in entry["runs"] if r["kind"] == "finetune" and r["minutes"] <= TARGET_MINUTES]
        entry["target_met"] = any(r["points_over_base"] >= TARGET_POINTS for r in within) if within else None
        save()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

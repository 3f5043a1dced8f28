"""Default model quality and speed: fp32 ONNX vs int8 ONNX on the held-out Dubai tiles, side by side in one run.

Scores the embedded model files exactly as the plugin runs them (ONNX Runtime backend of the engine, the card's
tile size and overlap, gaussian stitching through the engine's tiling and stitching) on whole validation (tile 3)
and test (tile 1) images at the training resolution (from the card's nominal GSD), and times both backends on the same tiles.

Usage: PYTHONPATH=. .venv/bin/python -m benchmarks.default_model [--splits val test] [--threads 2] [--tta flip]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends import load_backend
from engine.evaluation.metrics import SegmentationMetrics
from engine.inference.pipeline import make_predictor
from engine.inference.tiling import TilingSpec
from engine.model_file import ModelFile
from training.datasets import build_dataset
from training.inference import score_images
from training.transforms import Normalization

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "dubai-aerial"
SPLIT_TILES = {"val": {"val_tiles": [3], "test_tiles": [1]}, "test": {"val_tiles": [3], "test_tiles": [1]}}


#: The dataset publishes no pixel size; its pixels are taken as this nominal size (as the training configs do).
DATASET_NOMINAL_GSD_M = 1.0


def training_downscale(card_gsd_m: float | None) -> float:
    """The ``downscale`` the model was trained at, from the card's nominal GSD (2 m -> 0.5, 1 m -> 1.0)."""
    if not card_gsd_m:
        return 1.0
    return min(1.0, DATASET_NOMINAL_GSD_M / card_gsd_m)


class TimedOnnxPredictor:
    """The engine's ONNX Runtime backend and TTA predictor (the plugin's own code path), timed."""

    def __init__(self, path: Path, threads: int, tta: str = "none") -> None:
        model = ModelFile.open(path)
        self.card = model.card
        self.backend = load_backend(model, backend="onnxruntime", device="cpu", num_threads=threads)
        self.predict = make_predictor(self.backend, self.card.num_classes, tta)  # the plugin's own TTA code path
        self.seconds = 0.0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        probs = self.predict(batch)
        self.seconds += time.perf_counter() - started
        return probs


def score(model: Path, split: str, threads: int, tta: str = "none") -> dict[str, Any]:
    backend = TimedOnnxPredictor(model, threads, tta)
    card = backend.card
    dataset = build_dataset(
        "dubai_aerial",
        DATA,
        split,
        normalization=Normalization.from_card(card),
        downscale=training_downscale(card.gsd_m),
        **SPLIT_TILES[split],
    )
    spec = TilingSpec(tile_size_px=card.tile_size_px, overlap_px=card.overlap_px)
    samples = (dataset[i] for i in range(len(dataset)))
    cm = score_images(backend, samples, card.num_classes, card.ignore_index, spec).confusion
    metrics = SegmentationMetrics.from_confusion(cm, card.class_names)
    return {
        "model": model.name,
        "size_mb": round(model.stat().st_size / 1e6, 2),
        "split": split,
        "tta": tta,
        "images": len(dataset),
        "miou": metrics.miou,
        "oa": metrics.oa,
        "iou": dict(zip(card.class_names, (float(v) for v in metrics.iou), strict=True)),
        "model_seconds": round(backend.seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path,
                        default=[REPO / "resources/models/default.onnx", REPO / "resources/models/default.int8.onnx"])  # fmt: skip
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", choices=("none", "flip"), default="none", help="flip test-time augmentation (3x)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "default_model.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [
        score(model, split, args.threads, args.tta) for split in args.splits for model in args.models if model.exists()
    ]
    result: dict[str, Any] = {"rows": rows}
    for split in args.splits:
        pair = [r for r in rows if r["split"] == split]
        if len(pair) == 2:
            result[f"{split}_int8_minus_fp32_miou_points"] = round(100 * (pair[1]["miou"] - pair[0]["miou"]), 2)
            result[f"{split}_int8_speedup"] = round(pair[0]["model_seconds"] / pair[1]["model_seconds"], 3)
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

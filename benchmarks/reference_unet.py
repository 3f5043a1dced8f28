"""Reference baseline for the default model: a plain 1.1 M-parameter U-Net on the default model's Dubai split.

Issue 6 sets the default model's target against "a plain 1.1 M-parameter U-Net trained from scratch on this
2-core CPU (half resolution, cross-entropy with label smoothing, flips, AdamW)". This script trains exactly that
recipe on the split the default model uses (train on tiles 2, 4, 5, 6, 7; validation tile 3; test tile 1) and
prints JSON rows of validation and test mIoU every ``--eval-every`` minutes, so the target can be read against
the same tiles. It also trains ``bicorseg_small`` under the same recipe (``--model bicorseg_small``) for a side by
side comparison at equal wall time. Two runs with ``--threads 1`` can share the 2-core machine fairly.

Recipe: images halved once at load; random 256 px crops, image drawn by area; horizontal and vertical flips;
batch 8; AdamW (lr 1e-3, weight decay 0.01), cosine to zero over ``--minutes``; cross-entropy with label smoothing
0.1 (ignore 255); no gradient clipping. Evaluation: whole images, reflect-padded to a multiple of 32, argmax.

Usage: PYTHONPATH=. .venv/bin/python -m benchmarks.reference_unet [--model unet] [--minutes 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.evaluation.metrics import ConfusionMatrixAccumulator, SegmentationMetrics
from engine.models import create_model
from training.datasets.colour_masks import DubaiAerial
from training.transforms import Normalization

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "dubai-aerial"
CROP_PX = 256
NUM_CLASSES = 5
IGNORE = 255
NORMALIZE = Normalization()  # ImageNet statistics on 8-bit input, as the default model


def _logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def _batch(dataset: DubaiAerial, rng: np.random.Generator, size: int = 8) -> tuple[Any, Any]:
    images, masks = [], []
    for _ in range(size):
        # The dataset's own random window: image drawn by area, padded (image 0, mask ignore) where it is smaller.
        sample = dataset.load_sample(0, rng)
        image, mask = sample["image"], sample["mask"]
        if rng.random() < 0.5:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[::-1]
        images.append(NORMALIZE(image))
        masks.append(mask.copy())
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: DubaiAerial) -> dict[str, Any]:
    """mIoU and per-class IoU over whole images of a split."""
    model.eval()
    confusion = ConfusionMatrixAccumulator(NUM_CLASSES, IGNORE)
    for image, mask in zip(dataset.images, dataset.masks, strict=True):
        height, width = mask.shape
        x = torch.from_numpy(NORMALIZE(image)[None])
        x = F.pad(x, (0, -width % 32, 0, -height % 32), mode="reflect")
        confusion.update(_logits(model(x))[0, :, :height, :width].argmax(0).numpy(), mask)
    model.train()
    metrics = SegmentationMetrics.from_confusion(confusion.matrix, dataset.info.class_names)
    return {"miou": round(metrics.miou, 4), "iou": [round(v, 3) for v in metrics.iou]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet", help="'unet' or a registered model name (e.g. bicorseg_small)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--eval-every", type=float, default=6.0, help="minutes between evaluations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    split: dict[str, Any] = {"val_tiles": [3], "test_tiles": [1], "downscale": 0.5}
    train = DubaiAerial(DATA, "train", samples_per_epoch=1, window_px=CROP_PX, **split)
    val, test = (DubaiAerial(DATA, name, **split) for name in ("val", "test"))
    model: nn.Module = create_model(args.model, NUM_CLASSES)  # "unet" is the engine's reference U-Net
    optimizer = torch.optim.AdamW(model.parameters(), args.lr, weight_decay=0.01)
    started, step, next_eval = time.monotonic(), 0, args.eval_every
    while True:
        minutes = (time.monotonic() - started) / 60
        if minutes >= next_eval or minutes >= args.minutes:
            row = {"model": args.model, "minutes": round(minutes, 1), "steps": step}
            row |= {f"val_{k}": v for k, v in evaluate(model, val).items()}
            row |= {f"test_{k}": v for k, v in evaluate(model, test).items()}
            print(json.dumps(row), flush=True)
            next_eval += args.eval_every
            if minutes >= args.minutes:
                break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(minutes / args.minutes, 1.0)))
        images, masks = _batch(train, rng)
        logits = _logits(model(images))
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1


if __name__ == "__main__":
    main()

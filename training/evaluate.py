"""Evaluate a checkpoint on a split: ``python -m training.evaluate CHECKPOINT [--split test] [--tta none|flip|d4]``.

Whole images are predicted by overlapping tiles blended with the engine's stitching (the same code path as
inference in QGIS), optionally with test-time augmentation, and scored with the dataset's protocol:
``eval_classes`` decides which classes mIoU/mF1 average over (ISPRS leaves clutter out; ``miou_all`` is then
also reported), OA and kappa always use every class.

Writes ``metrics.json`` and ``confusion_matrix.png`` into ``--out``; ``--predictions DIR`` writes one class-index
PNG per image, and ``--submission FILE.zip`` zips those PNGs at the zip root, named like the test images, which
is what the LoveDA benchmark server expects (its test labels are hidden).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from engine.errors import InvalidInputError
from engine.evaluation.metrics import SegmentationMetrics
from engine.inference.tiling import TilingSpec
from training.checkpoints import load_model, load_training_checkpoint
from training.command import run_json_command
from training.config import TrainConfig, load_config, resolve_config
from training.datasets import DatasetInfo, SegmentationDataset, build_dataset
from training.distributed import select_device
from training.inference import TTA_MODES, ImageScores, module_predictor, score_images, shapes_of
from training.plots import plot_confusion_matrix
from training.transforms import Normalization

__all__ = ["card_metrics", "main", "metrics_summary", "score_confusion", "validate", "write_metrics_json"]

logger = logging.getLogger(__name__)


def validate(
    model: nn.Module,
    samples: Iterable[Mapping[str, Tensor]],
    info: DatasetInfo,
    config: TrainConfig,
    device: torch.device,
    amp: bool = False,
    tta: str = "none",
    on_image: Callable[[int, NDArray[np.int64]], None] | None = None,
) -> ImageScores:
    """Confusion matrix and loss of whole validation images, predicted tile by tile as at inference (eval mode).

    ``on_image`` is called after each image (progress, cancel). The model is put back into training mode afterwards.
    """
    was_training = model.training
    model.eval()
    predict = module_predictor(model, shapes_of(info), device, tta=tta, amp=amp, channels_last=config.run.channels_last)
    spec = TilingSpec(config.model.tile_size_px, config.model.overlap_px)
    try:
        return score_images(predict, samples, info.num_classes, info.ignore_index, spec,
                            config.run.stitching, config.run.val_batch_size, on_image)  # fmt: skip
    finally:
        model.train(was_training)


def score_confusion(confusion: NDArray[np.int64], info: DatasetInfo) -> SegmentationMetrics:
    """Scores of a confusion matrix under the dataset's protocol (its ``eval_classes``)."""
    return SegmentationMetrics.from_confusion(confusion, info.class_names, info.eval_classes)


def metrics_summary(scores: SegmentationMetrics) -> dict[str, float]:
    """Flat ``{name: value}`` of the headline scores and per-class IoU, for logs and CSV columns."""
    out = {"miou": scores.miou, "mf1": scores.mf1, "oa": scores.oa, "kappa": scores.kappa}
    if len(scores.eval_classes) != len(scores.class_names):
        finite = [v for v in scores.iou if not math.isnan(v)]
        out["miou_all"] = float(np.mean(finite)) if finite else math.nan
    out.update({f"iou_{name}": value for name, value in zip(scores.class_names, scores.iou, strict=True)})
    return out


def card_metrics(scores: SegmentationMetrics, prefix: str = "val_") -> dict[str, float]:
    """Finite scores for the model card's ``metrics`` (NaN is not valid JSON)."""
    return {f"{prefix}{k}": round(v, 4) for k, v in metrics_summary(scores).items() if not math.isnan(v)}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_metrics_json(scores: SegmentationMetrics, path: Path, **context: Any) -> Path:
    """Write the scores (NaN as null), per-class values and confusion matrix, plus context (split, epoch, ...)."""
    payload = {**context, **scores.to_dict(), "summary": metrics_summary(scores)}
    path.write_text(json.dumps(_json_safe(payload), indent=2), encoding="utf-8")
    return path


def _image_names(dataset: SegmentationDataset) -> list[str]:
    """Output file stems: the source image names where the dataset knows them, else running numbers."""
    items = getattr(dataset, "items", None)
    if isinstance(items, list) and len(items) == len(dataset):
        return [Path(item[0]).stem for item in items]
    return [f"{i:05d}" for i in range(len(dataset))]


def write_submission_zip(prediction_dir: Path, zip_path: Path) -> Path:
    """Zip every PNG of ``prediction_dir`` at the zip root (no folder), as the LoveDA server requires."""
    pngs = sorted(prediction_dir.glob("*.png"))
    if not pngs:
        raise InvalidInputError(f"No predictions in '{prediction_dir}' to zip; run the evaluation first.")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for png in pngs:
            archive.write(png, arcname=png.name)
    return zip_path


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by training.train (best.pt)")
    parser.add_argument("--config", type=Path, default=None, help="config to use instead of the checkpoint's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--split", default=None, help="split to score (default: the config's data.test_split)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for metrics.json (default: next to the checkpoint)"
    )
    parser.add_argument("--predictions", type=Path, default=None, help="write class-index PNGs here")
    parser.add_argument("--submission", type=Path, default=None, help="zip the PNGs for a benchmark server")
    parser.add_argument("--max-images", type=int, default=0, help="score at most this many images (0 = all)")
    return parser.parse_args(argv)


def _config_for(args: argparse.Namespace, checkpoint: Mapping[str, Any]) -> TrainConfig:
    if args.config is not None:
        return load_config(args.config, args.set)
    if "config" not in checkpoint:
        raise InvalidInputError(f"Checkpoint '{args.checkpoint}' carries no config; pass --config.")
    return resolve_config(checkpoint["config"], args.set)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation described by the parsed command line; returns the metrics summary."""
    checkpoint = load_training_checkpoint(args.checkpoint)
    config = _config_for(args, checkpoint)
    split = args.split or config.data.test_split
    device = select_device(args.device)
    model, card = load_model(checkpoint, device)
    normalization = Normalization.from_card(card)
    dataset = build_dataset(config.data.name, config.data.root, split, normalization=normalization,
                            **config.data.options)  # fmt: skip
    info = dataset.info
    if info.class_names != card.class_names:
        raise InvalidInputError(f"Dataset classes {info.class_names} differ from the model's {card.class_names}.")
    count = min(len(dataset), args.max_images) if args.max_images else len(dataset)
    names = _image_names(dataset)
    out_dir = args.out or args.checkpoint.parent / f"eval_{split}_{args.tta}"
    out_dir.mkdir(parents=True, exist_ok=True)
    prediction_dir = args.predictions
    if args.submission is not None and prediction_dir is None:
        prediction_dir = out_dir / "predictions"
    if prediction_dir is not None:
        prediction_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=count, desc=f"evaluating {split}", disable=not sys.stderr.isatty())

    def on_image(index: int, labels: NDArray[np.int64]) -> None:
        if prediction_dir is not None:
            Image.fromarray(labels.astype(np.uint8)).save(prediction_dir / f"{names[index]}.png")
        bar.update(1)

    predict = module_predictor(model, shapes_of(info), device, tta=args.tta, amp=device.type == "cuda")
    spec = TilingSpec(config.model.tile_size_px, config.model.overlap_px)
    samples = (dataset[i] for i in range(count))
    confusion = score_images(predict, samples, info.num_classes, info.ignore_index, spec,
                             config.run.stitching, config.run.val_batch_size, on_image).confusion  # fmt: skip
    bar.close()
    scores = score_confusion(confusion, info)
    write_metrics_json(scores, out_dir / "metrics.json", checkpoint=str(args.checkpoint), split=split, tta=args.tta,
                       images=count, protocol=info.protocol)  # fmt: skip
    if scores.pixel_count:
        plot_confusion_matrix(confusion, info.class_names, out_dir / "confusion_matrix.png", f"{info.name} {split}")
    else:
        logger.warning("Split '%s' has no labels (hidden test set): no scores; submit the predictions instead.", split)
    if args.submission is not None and prediction_dir is not None:
        write_submission_zip(prediction_dir, args.submission)
        logger.info("Wrote the submission %s (%d PNGs).", args.submission, count)
    summary = {"split": split, "tta": args.tta, "images": count, **_json_safe(metrics_summary(scores))}
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: prints the summary as JSON; exit code 2 for bad input."""
    args = _parse_args(argv)
    return run_json_command(lambda: evaluate(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""A small Deepness-style U-Net trained briefly on the Dubai tiles, for the shift-stability benchmark.

The recipe is :mod:`benchmarks.reference_unet`'s (the plain 1.1 M-parameter U-Net, half resolution, random 256 px
crops, flips, AdamW with a cosine schedule, cross-entropy with label smoothing) run for ``--minutes`` on the
default model's training tiles; the result is exported the way Deepness models are: a fixed 512 x 512 input, a
softmax output (card ``output_activation = probabilities``) and a card at 1 m per pixel (the Dubai pixels are
taken as 0.5 m, and the model sees them halved). The weights only have to be a realistic, non-equivariant
segmentation network: the benchmark measures how much the tiling engine changes its answers, not its accuracy.

Usage::

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.shift_unet --minutes 20 \
        --out benchmarks/models/dubai_unet.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.reference_unet import DATA, IGNORE, NUM_CLASSES, _batch, _logits, evaluate
from engine.model_card import ModelCard, embed_card
from engine.models.unet import UNet
from training.datasets.colour_masks import DUBAI_CLASSES, DubaiAerial

logger = logging.getLogger(__name__)

#: The card's ground sampling distance: the Dubai pixels taken as 0.5 m, halved for training.
UNET_GSD_M = 1.0
UNET_TILE_PX = 512
UNET_OVERLAP_PX = 77
DEFAULT_OUT = Path(__file__).resolve().parent / "models" / "dubai_unet.onnx"


class _Softmax(nn.Module):
    """The U-Net with a softmax on its output, as Deepness segmentation models are exported."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(_logits(self.net(x)), dim=1)


def unet_card(minutes: float, steps: int, val_miou: float, threads: int) -> ModelCard:
    """The card of the trained U-Net (Deepness-style: fixed 512 input, probabilities out, 1 m per pixel)."""
    return ModelCard(
        name="Dubai U-Net (shift-stability benchmark)",
        architecture="external",
        class_names=tuple(name for name, _ in DUBAI_CLASSES),
        class_colors=tuple("#{:02x}{:02x}{:02x}".format(*rgb) for _, rgb in DUBAI_CLASSES),
        gsd_m=UNET_GSD_M,
        tile_size_px=UNET_TILE_PX,
        overlap_px=UNET_OVERLAP_PX,
        size_divisor_px=UNET_TILE_PX,
        output_activation="probabilities",
        description=(
            f"Plain 1.1 M-parameter U-Net, benchmarks/reference_unet.py recipe, trained {minutes:.0f} min "
            f"({steps} steps) with {threads} CPU thread(s) on a shared machine; for the shift-stability benchmark only."
        ),
        license="CC0-1.0",
        training_data="Dubai aerial land-cover dataset (Humans in the Loop, MBRSC), CC0 1.0; tiles 2, 4, 5, 6, 7",
        metrics={"val_miou": val_miou},
    )


def export_softmax_model(net: nn.Module, card: ModelCard, path: Path) -> Path:
    """Export Deepness-style: a fixed (batch, bands, tile, tile) input, a softmax output, the card embedded."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _Softmax(net).eval()
    tmp = path.with_name(path.name + ".tmp")
    tile = card.tile_size_px
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (torch.zeros(1, card.num_bands, tile, tile),), str(tmp), input_names=["input"],
            output_names=["probabilities"], dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(tmp))
    embed_card(proto, card)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def train(minutes: float, threads: int, out: Path, lr: float = 1e-3, state: Path | None = None) -> dict[str, float]:
    """Train the U-Net for ``minutes`` of wall time, export it to ``out`` and return its summary.

    With ``state``, the weights are also saved there every 100 steps and at the end (a torch state dict).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    split = {"val_tiles": [3], "test_tiles": [1], "downscale": 0.5}
    train_set = DubaiAerial(DATA, "train", samples_per_epoch=1, window_px=256, **split)
    val_set = DubaiAerial(DATA, "val", **split)
    net = UNet(NUM_CLASSES)
    optimizer = torch.optim.AdamW(net.parameters(), lr, weight_decay=0.01)
    started, step = time.monotonic(), 0
    while (elapsed := (time.monotonic() - started) / 60) < minutes:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(elapsed / minutes, 1.0)))
        images, masks = _batch(train_set, rng)
        loss = F.cross_entropy(_logits(net(images)), masks, ignore_index=IGNORE, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0:
            logger.warning("step %d, %.1f min, loss %.3f", step, elapsed, float(loss.detach()))
            if state is not None:
                torch.save(net.state_dict(), state)
    trained = (time.monotonic() - started) / 60
    scores = evaluate(net, val_set)
    net.eval()
    if state is not None:
        torch.save(net.state_dict(), state)
    card = unet_card(trained, step, scores["miou"], threads)
    export_softmax_model(net, card, out)
    summary = {"minutes": round(trained, 1), "steps": step, "val_miou": scores["miou"]}
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--state", type=Path, default=None, help="also save the torch weights here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    train(args.minutes, args.threads, args.out, state=args.state)


if __name__ == "__main__":
    main()

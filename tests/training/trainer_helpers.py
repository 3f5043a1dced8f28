"""Shared set-up for the trainer tests: tiny models, prepared fake datasets, a Dubai-like colour-mask fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from training.datasets.colour_masks import DUBAI_CLASSES
from training.prepare import PatchRecipe, prepare

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "data"

#: Hi-ResNet small enough to train a step in well under a second on one CPU thread (size divisor 16).
TINY_HI_RESNET: dict[str, Any] = {
    "stem_channels": 8,
    "funnel_channels": 16,
    "funnel_blocks": 1,
    "funnel_expansion": 2,
    "branch_channels": [16, 32, 48],
    "stage_blocks": [1, 1],
    "stage_modules": [1, 1],
    "coarse_head_channels": 16,
    "ocr_channels": 16,
    "ocr_key_channels": 8,
    "aspp_dilations": [1, 2, 3],
    "drop_path_rate": 0.0,
}
#: BiCoR-Seg on the smallest ConvNeXt with a narrow embedding (size divisor 32).
TINY_BICORSEG: dict[str, Any] = {"backbone": "atto", "embed_dim": 16, "num_layers": 2, "min_pixels": 4}
#: The reference U-Net with three narrow levels (size divisor 4).
TINY_UNET: dict[str, Any] = {"widths": [8, 16, 32]}


def prepared_fake(name: str, out: Path) -> Path:
    """Prepare the committed raw fake of a benchmark into ``out``: 32 px training patches (LoveDA: whole images)."""
    recipe = PatchRecipe(0, 0, 0) if name == "loveda" else PatchRecipe(32, 16, 0)
    prepare(name, FAKES / name / "raw", out, recipe)
    return out


def write_colour_mask_fake(root: Path, tiles: int = 3, parts: int = 2, size: tuple[int, int] = (40, 48)) -> Path:
    """A Dubai-like tree ``root/tile<i>/{images,masks}`` with JPEG images and RGB colour masks (seeded)."""
    rng = np.random.default_rng(3)
    colours = [np.array(c, dtype=np.uint8) for _, c in DUBAI_CLASSES] + [np.array((155, 155, 155), np.uint8)]
    for t in range(1, tiles + 1):
        for p in range(1, parts + 1):
            (root / f"tile{t}" / "images").mkdir(parents=True, exist_ok=True)
            (root / f"tile{t}" / "masks").mkdir(parents=True, exist_ok=True)
            grid = rng.integers(0, len(colours), size=(4, 4))
            labels = np.kron(grid, np.ones((size[0] // 4, size[1] // 4), dtype=np.int64))
            mask = np.stack([colours[i] for i in labels.ravel()]).reshape(*labels.shape, 3)
            image = (mask.astype(np.int16) + rng.integers(-20, 20, size=mask.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / f"tile{t}" / "images" / f"image_part_{p:03d}.jpg", quality=95)
            Image.fromarray(mask).save(root / f"tile{t}" / "masks" / f"image_part_{p:03d}.png")
    return root


def tiny_config(path: Path, model: str = "hi_resnet_small", **sections: dict[str, Any]) -> Path:
    """Write a YAML config for 2 optimizer steps of a tiny model on 32 px crops, on the CPU, quickly."""
    options = TINY_BICORSEG if model.startswith("bicorseg") else TINY_UNET if model == "unet" else TINY_HI_RESNET
    config: dict[str, Any] = {
        "data": {"crop_size_px": 32, "batch_size": 2, "num_workers": 0, "scales": [1.0], "mosaic_p": 0.0},
        "model": {"name": model, "options": options, "tile_size_px": 32, "overlap_px": 8},
        "optim": {"lr": 1.0e-3},
        "schedule": {"epochs": 1, "warmup_epochs": 0, "steps_per_epoch": 2},
        "run": {
            "device": "cpu",
            "max_steps": 2,
            "threads": 1,
            "tensorboard": False,
            "plots": False,
            "progress_bar": False,
            "max_val_images": 1,
            "val_batch_size": 2,
            "log_every_steps": 1,
        },
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path

"""The Hi-ResNet paper protocol configs, their named variants, and MoCo v2 pre-training feeding a fine-tuning run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.parametrize("dataset", ["loveda", "potsdam", "vaihingen"])
def test_paper_configs_use_the_papers_augmentation_split_and_smoothing(dataset: str) -> None:
    paper = load_config(CONFIGS / f"{dataset}_hi_resnet.yaml")
    # Paper IV-B: h/v flips and scales 0.5-1.5 only; no CutMix, mosaic, quarter turns or smart crops.
    assert (paper.data.cutmix_p, paper.data.mosaic_p, paper.data.rot90_p) == (0.0, 0.0, 0.0)
    assert paper.data.smart_crop_max_ratio == 0.0  # no draw is accepted: a plain random crop
    assert tuple(paper.data.scales) == (0.5, 0.75, 1.0, 1.25, 1.5) and paper.data.flip_p == 0.5
    # LoveDA Train+Val; Potsdam's 23 and Vaihingen's 16 tiles are the train tiles plus the val tile.
    assert paper.data.train_split == "train_val"
    assert paper.loss["smoothing_spread"] == "others"
    variant = load_config(CONFIGS / f"{dataset}_hi_resnet_cutmix_mosaic.yaml")
    assert (variant.data.cutmix_p, variant.data.mosaic_p, variant.data.smart_crop_max_ratio) == (0.5, 0.25, 0.75)
    assert variant.data.train_split == "train"


@pytest.mark.parametrize("dataset", ["potsdam", "vaihingen"])
def test_held_out_tile_variant_trains_on_the_train_tiles_only(dataset: str) -> None:
    held = load_config(CONFIGS / f"{dataset}_hi_resnet_heldout.yaml")
    assert (held.data.train_split, held.data.val_split) == ("train", "val")
    assert held.data.cutmix_p == 0.0 and held.data.mosaic_p == 0.0


def test_isprs_paper_split_counts_23_potsdam_and_16_vaihingen_tiles() -> None:
    from training.datasets.isprs import ISPRS_SPLITS
    from training.datasets.potsdam import POTSDAM_DROPPED, POTSDAM_TILES
    from training.datasets.vaihingen import VAIHINGEN_TEST_AREAS, VAIHINGEN_TILES

    train_val = ISPRS_SPLITS["train_val"]
    potsdam = [tile for split in train_val for tile in POTSDAM_TILES[split]]
    vaihingen = [tile for split in train_val for tile in VAIHINGEN_TILES[split]]
    assert len(set(potsdam)) == 23 and "7_10" in POTSDAM_DROPPED and "7_10" not in potsdam  # paper IV-A
    assert len(set(vaihingen)) == 16  # the 33 tiles minus the 17 test tiles
    assert VAIHINGEN_TEST_AREAS == (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)


def test_moco_pretraining_config_feeds_the_fine_tuning_config(tmp_path: Path) -> None:
    from tests.training.trainer_helpers import prepared_fake
    from training.pretrain import main as pretrain_main
    from training.train import main as train_main

    rng = np.random.default_rng(0)
    images = tmp_path / "tiles"
    images.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(images / f"tile{i}.png")
    weights = tmp_path / "moco.pt"
    pretrain_config = CONFIGS / "pretrain" / "millionaid_hi_resnet_moco.yaml"
    small = ["--size", "32", "--batch-size", "2", "--queue", "8", "--max-steps", "1", "--num-workers", "0"]
    args = [str(images), "-o", str(weights), "--config", str(pretrain_config), *small, "--device", "cpu"]
    assert pretrain_main([*args, "--threads", "1"]) == 0
    saved = torch.load(weights, weights_only=True)
    assert saved["architecture"] == "hi_resnet" and saved["method"] == "moco_v2"  # from the config file

    root = prepared_fake("loveda", tmp_path / "data")
    overrides = {
        "data.root": str(root), "data.crop_size_px": 32, "data.batch_size": 2, "data.num_workers": 0,
        "model.pretrained_backbone": str(weights), "model.tile_size_px": 32, "model.overlap_px": 8,
        "schedule.epochs": 1, "schedule.warmup_epochs": 0, "schedule.steps_per_epoch": 1,
        "run.device": "cpu", "run.max_steps": 1, "run.threads": 1, "run.tensorboard": False, "run.plots": False,
        "run.progress_bar": False, "run.max_val_images": 1, "run.val_batch_size": 1,
        "run.out_dir": str(tmp_path / "runs"), "run.name": "moco", "run.amp": False,
    }  # fmt: skip
    sets = [item for key, value in overrides.items() for item in ("--set", f"{key}={json.dumps(value)}")]
    assert train_main(["--config", str(CONFIGS / "loveda_hi_resnet_moco.yaml"), *sets]) == 0
    resolved = (tmp_path / "runs" / "moco" / "config.yaml").read_text(encoding="utf-8")
    assert str(weights) in resolved
    # The config really reads the file: without it the run stops with the bad-input exit code.
    missing = [*sets, "--set", f"model.pretrained_backbone={tmp_path / 'absent.pt'}", "--set", "run.name=absent"]
    assert train_main(["--config", str(CONFIGS / "loveda_hi_resnet_moco.yaml"), *missing]) == 2

"""Leave-one-tile-out folds (training.folds) on a tiny generated Dubai-like tree, through the real trainer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.errors import InvalidInputError
from tests.training.trainer_helpers import REPO, tiny_config, write_colour_mask_fake
from training import folds
from training.losses import LossConfig, ReferenceLoss, build_loss, resolve_model_family


@pytest.fixture()
def two_recipes(tmp_path: Path) -> list[Path]:
    root = write_colour_mask_fake(tmp_path / "dubai", tiles=3, size=(64, 64))
    data = {"name": "dubai_aerial", "root": str(root), "options": {"val_tiles": [3]},
            "train_options": {"samples_per_epoch": 4, "window_px": 48}}  # fmt: skip
    unet = tiny_config(tmp_path / "unet_a.yaml", model="unet", data=data, run={"max_val_images": 0})
    bicor = tiny_config(tmp_path / "bicor_b.yaml", model="bicorseg_small_lu", data=data, run={"max_val_images": 0})
    return [unet, bicor]


def test_every_recipe_trains_on_every_fold_and_is_scored_on_the_held_out_tile(two_recipes, tmp_path, monkeypatch):
    configs = two_recipes
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    out = tmp_path / "folds"
    assert folds.main([*[a for c in configs for a in ("--config", str(c))], "--folds", "1", "2", "--minutes", "5",
                       "--out-dir", str(out), "--json", str(out / "table.json")]) == 0  # fmt: skip
    table = json.loads((out / "table.json").read_text())
    assert sorted((r["recipe"], r["fold_tile"]) for r in table["runs"]) == [
        ("bicor_b", 1), ("bicor_b", 2), ("unet_a", 1), ("unet_a", 2)]  # fmt: skip
    for recipe in ("unet_a", "bicor_b"):
        runs = [r for r in table["runs"] if r["recipe"] == recipe]
        assert table["summary"][recipe]["mean_last_miou"] == pytest.approx(sum(r["last_miou"] for r in runs) / 2,
                                                                           abs=1e-4)  # fmt: skip
        assert all(r["steps"] == 2 for r in runs)
    # Each recipe's fold scores as card metrics, for training.export --card-metrics.
    metrics = json.loads((out / "unet_a" / "card_metrics.json").read_text())
    runs = {r["fold_tile"]: r["last_miou"] for r in table["runs"] if r["recipe"] == "unet_a"}
    assert metrics == {"fold_mean_miou": table["summary"]["unet_a"]["mean_last_miou"], "fold1_miou": runs[1],
                       "fold2_miou": runs[2]}  # fmt: skip
    # The fold's tile was the validation split, and no other tile was: each run's log names what it loaded.
    log = (out / "unet_a" / "fold1" / "train.log").read_text()
    assert "val: 2 images from tiles ['tile1']" in log
    assert "train: 4 images from tiles ['tile2', 'tile3']" in log
    # A finished fold is not trained again.
    stamp = os.stat(out / "unet_a" / "fold1" / "done.json").st_mtime_ns
    assert folds.main([*[a for c in configs for a in ("--config", str(c))], "--folds", "1", "--out-dir", str(out)]) == 0
    assert os.stat(out / "unet_a" / "fold1" / "done.json").st_mtime_ns == stamp


def test_a_failing_run_names_its_log(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: no_such_model}\n")
    monkeypatch.chdir(REPO)
    with pytest.raises(InvalidInputError, match=r"bad fold 1 \(see .*train.log\)"):
        folds.run_fold([bad], 1, tmp_path / "out", minutes=1, threads=1)


def test_read_score_uses_the_last_validation_not_the_best(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,val_miou,val_iou_a,elapsed_s\n1,10,0.5,0.4,60\n2,20,,,\n3,30,0.4,0.3,180\n"
    )
    score = folds.read_score(tmp_path, "r", 3)
    assert (score.last_miou, score.best_miou, score.steps, score.minutes) == (0.4, 0.5, 30, 3.0)
    assert score.last_iou == {"a": 0.3}


def test_reference_family_is_label_smoothed_cross_entropy_only():
    assert resolve_model_family("unet") == "reference"
    loss = build_loss("unet", LossConfig(num_classes=3))
    assert isinstance(loss, ReferenceLoss)
    assert loss.smoothing == pytest.approx(0.1)

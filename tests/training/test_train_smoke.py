"""Smoke tests of ``python -m training.train``: two optimizer steps on every fake dataset, resume, time budget."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.model_card import ModelCard
from tests.training.trainer_helpers import REPO, prepared_fake, tiny_config, write_colour_mask_fake
from training.checkpoints import load_model
from training.datasets import DATASET_INFOS
from training.datasets.colour_masks import DUBAI_CLASSES
from training.train import main


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("dataset", ["loveda", "potsdam", "vaihingen", "uavid"])
def test_two_steps_on_each_fake_benchmark_write_checkpoints_with_card(dataset: str, tmp_path: Path) -> None:
    root = prepared_fake(dataset, tmp_path / "data")
    config = tiny_config(tmp_path / "tiny.yaml", data={"name": dataset, "root": str(root)})
    code = main(["--config", str(config), "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "run.name=smoke"])
    assert code == 0
    run_dir = tmp_path / "runs" / "smoke"
    checkpoint = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    card = ModelCard.from_json(checkpoint["model_card"])
    assert card.class_names == DATASET_INFOS[dataset].class_names
    assert card.architecture == "hi_resnet_small"
    assert checkpoint["config"]["data"]["name"] == dataset
    rows = _rows(run_dir / "metrics.csv")
    assert len(rows) == 1
    assert int(rows[0]["step"]) == 2
    assert math.isfinite(float(rows[0]["train_loss"]))
    assert 0.0 <= float(rows[0]["val_oa"]) <= 1.0
    assert "optimizer" in torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    model, loaded_card = load_model(run_dir / "best.pt")
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 32, 32)).logits
    assert logits.shape == (1, loaded_card.num_classes, 32, 32)


def test_bicorseg_trains_two_steps_with_its_own_loss_terms(tmp_path: Path) -> None:
    root = prepared_fake("loveda", tmp_path / "data")
    config = tiny_config(tmp_path / "tiny.yaml", model="bicorseg_small", data={"name": "loveda", "root": str(root)},
                         loss={"has_fisher_loss": True}, run={"channels_last": True})  # fmt: skip
    assert main(["--config", str(config), "--set", f"run.out_dir={tmp_path}", "--set", "run.name=b"]) == 0
    row = _rows(tmp_path / "b" / "metrics.csv")[0]
    assert any(key.startswith("train_") and "heat" in key for key in row), row.keys()
    assert int(row["step"]) == 2


def test_command_line_on_colour_mask_data_writes_every_run_file(tmp_path: Path) -> None:
    root = write_colour_mask_fake(tmp_path / "dubai")
    config = tiny_config(
        tmp_path / "dubai.yaml",
        data={"name": "dubai_aerial", "root": str(root), "options": {"val_tiles": [2], "test_tiles": [3]},
              "train_options": {"samples_per_epoch": 4, "window_px": 40}},
        run={"out_dir": str(tmp_path / "runs"), "plots": True, "tensorboard": True, "max_val_images": 0,
             "channels_last": True},
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "training.train", "--config", str(config)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "runs" / "dubai"
    expected = {"best.pt", "last.pt", "config.yaml", "metrics.csv", "steps.csv", "val_metrics.json", "loss.png",
                "metrics.png", "confusion_matrix.png", "tensorboard"}  # fmt: skip
    assert expected <= {p.name for p in run_dir.iterdir()}
    assert len(_rows(run_dir / "steps.csv")) == 2
    card = ModelCard.from_json(torch.load(run_dir / "best.pt", weights_only=True)["model_card"])
    assert card.class_names == tuple(name for name, _ in DUBAI_CLASSES)
    assert card.class_colors[0] == "#3c1098"
    assert "val_miou" in card.metrics


def test_resume_auto_continues_the_schedule_and_history(tmp_path: Path) -> None:
    root = prepared_fake("vaihingen", tmp_path / "data")
    lr, min_lr = 1e-3, 1e-5
    config = tiny_config(
        tmp_path / "tiny.yaml",
        data={"name": "vaihingen", "root": str(root), "batch_size": 1},
        optim={"lr": lr},
        schedule={"epochs": 2, "steps_per_epoch": 1, "min_lr": min_lr},
        run={"out_dir": str(tmp_path), "name": "r", "max_steps": 1},
    )
    assert main(["--config", str(config)]) == 0
    assert len(_rows(tmp_path / "r" / "metrics.csv")) == 1
    # Starting again without --resume would overwrite the run: refused with a fix in the message.
    assert main(["--config", str(config)]) == 2
    assert main(["--config", str(config), "--resume", "auto", "--set", "run.max_steps=0"]) == 0
    rows = _rows(tmp_path / "r" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [1, 2]
    # Step 1 of 2 is half-way through the cosine: min + (base - min) * (1 + cos(pi / 2)) / 2.
    assert float(rows[1]["lr"]) == pytest.approx(min_lr + (lr - min_lr) / 2)


def test_time_budget_stops_after_one_step_at_the_floor_rate(tmp_path: Path) -> None:
    root = prepared_fake("loveda", tmp_path / "data")
    config = tiny_config(
        tmp_path / "tiny.yaml",
        data={"name": "loveda", "root": str(root)},
        schedule={"epochs": 5, "min_lr": 2e-6},
        run={"out_dir": str(tmp_path), "name": "t", "max_steps": 0, "max_minutes": 1e-6},
    )
    assert main(["--config", str(config)]) == 0
    rows = _rows(tmp_path / "t" / "metrics.csv")
    assert len(rows) == 1
    assert int(rows[0]["step"]) == 1
    assert float(rows[0]["lr"]) == pytest.approx(2e-6)
    assert (tmp_path / "t" / "best.pt").is_file()


def test_bad_override_exits_2_and_names_the_valid_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path / "tiny.yaml")
    assert main(["--config", str(config), "--set", "optim.lrate=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrate" in err and "lr, weight_decay" in err


@pytest.mark.gpu
def test_amp_training_on_cuda_saves_the_scaler_state(tmp_path: Path) -> None:
    root = prepared_fake("loveda", tmp_path / "data")
    config = tiny_config(tmp_path / "tiny.yaml", data={"name": "loveda", "root": str(root)},
                         run={"device": "cuda", "amp": True, "out_dir": str(tmp_path), "name": "amp"})  # fmt: skip
    assert main(["--config", str(config)]) == 0
    last = torch.load(tmp_path / "amp" / "last.pt", map_location="cpu", weights_only=True)
    assert "scaler" in last
    assert math.isfinite(float(_rows(tmp_path / "amp" / "metrics.csv")[0]["train_loss"]))


def test_validation_tiles_shared_with_the_test_split_are_refused(tmp_path: Path) -> None:
    root = write_colour_mask_fake(tmp_path / "dubai")
    config = tiny_config(
        tmp_path / "dubai.yaml",
        data={"name": "dubai_aerial", "root": str(root), "options": {"val_tiles": [2], "test_tiles": [2, 3]}},
        run={"out_dir": str(tmp_path / "runs")},
    )
    assert main(["--config", str(config)]) == 2
    assert not (tmp_path / "runs" / "dubai" / "last.pt").exists()

"""A short real training run on the Dubai aerial data (real imagery) must lower the validation loss.

The baseline is the untrained model's loss on the same whole validation images (``run.validate_first``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from training.train import main

REPO = Path(__file__).resolve().parents[2]
DUBAI = REPO.parent / "shared" / "data" / "dubai-aerial"


@pytest.mark.slow
def test_short_real_run_lowers_the_validation_loss(tmp_path: Path) -> None:
    assert DUBAI.is_dir(), f"the real Dubai data is expected at {DUBAI} (shared/ beside the repository)"
    code = main(
        [
            "--config", str(REPO / "training/configs/dubai_hi_resnet_small.yaml"),
            "--set", f"data.root={DUBAI}",
            "--set", f"run.out_dir={tmp_path}",
            "--set", "run.name=short",
            "--set", "run.max_minutes=0",
            "--set", "schedule.epochs=4",
            "--set", "run.val_every_epochs=4",
            "--set", "run.validate_first=true",
            "--set", "data.train_options.samples_per_epoch=60",
            "--set", "data.options.val_tiles=[2]",
            "--set", "data.options.test_tiles=[1]",
            "--set", "run.plots=false",
        ]
    )  # fmt: skip
    assert code == 0
    with (tmp_path / "short" / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_loss")]
    assert [row["epoch"] for row in rows] == ["0", "4"]
    before, after = (float(row["val_loss"]) for row in rows)
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before

"""Evaluation: sliding-window prediction through the engine's tiling/stitching, protocol scores, LoveDA zip."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from engine.inference.tiling import TilingSpec
from tests.training.trainer_helpers import prepared_fake, tiny_config
from training.datasets import DATASET_INFOS
from training.evaluate import main as evaluate_main
from training.evaluate import metrics_summary, score_confusion, write_metrics_json
from training.inference import ModuleShapes, module_predictor, predict_image
from training.train import main as train_main


class _Pointwise(nn.Module):
    """Logits = 2 x input: each pixel's prediction depends on that pixel only, whatever the tile."""

    def forward(self, x: Tensor) -> Tensor:
        return 2.0 * x


@pytest.mark.parametrize(("tta", "stitching"), [("none", "gaussian"), ("flip", "cosine"), ("d4", "center_crop")])
def test_sliding_window_of_a_pointwise_model_equals_its_per_pixel_softmax(tta: str, stitching: str) -> None:
    image = torch.randn(3, 45, 70, generator=torch.Generator().manual_seed(0))
    predict = module_predictor(_Pointwise(), ModuleShapes(3, 3), torch.device("cpu"), tta=tta)
    probs = predict_image(predict, image, 3, TilingSpec(32, 8), stitching, batch_size=3)
    expected = torch.softmax(2.0 * image, dim=0).numpy()
    assert probs.shape == (3, 45, 70)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_unknown_tta_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="none, flip, d4"):
        module_predictor(_Pointwise(), ModuleShapes(3, 3), torch.device("cpu"), tta="ms")


def test_isprs_protocol_leaves_clutter_out_of_the_means_but_not_out_of_oa() -> None:
    info = DATASET_INFOS["vaihingen"]
    confusion = np.diag([10, 10, 10, 10, 10, 0]).astype(np.int64)
    confusion[5, 0] = 10  # clutter is never predicted: IoU(clutter) = 0, IoU(imp. surf.) = 10 / 20
    scores = score_confusion(confusion, info)
    summary = metrics_summary(scores)
    assert summary["miou"] == pytest.approx((0.5 + 1 + 1 + 1 + 1) / 5)
    assert summary["miou_all"] == pytest.approx((0.5 + 1 + 1 + 1 + 1 + 0) / 6)
    assert summary["oa"] == pytest.approx(50 / 60)


def test_isprs_paper_mf1_leaves_clutter_out_too() -> None:
    confusion = np.diag([10, 10, 10, 10, 10, 0]).astype(np.int64)
    confusion[5, 0] = 10  # F1(imp. surf.) = 2 * 10 / (20 + 10) = 2/3, F1(clutter) = 0
    scores = score_confusion(confusion, DATASET_INFOS["potsdam"])
    assert scores.mf1 == pytest.approx((2 / 3 + 4) / 5)
    assert [scores.class_names[i] for i in scores.eval_classes] == [
        "impervious_surface", "building", "low_vegetation", "tree", "car",
    ]  # fmt: skip


def test_loveda_means_cover_all_seven_classes() -> None:
    confusion = np.diag([5, 5, 5, 5, 5, 5, 0]).astype(np.int64)
    confusion[6, 0] = 5
    summary = metrics_summary(score_confusion(confusion, DATASET_INFOS["loveda"]))
    assert summary["miou"] == pytest.approx((0.5 + 5 + 0) / 7)
    assert "miou_all" not in summary  # the protocol already averages over every class


def test_metrics_json_is_strict_json(tmp_path: Path) -> None:
    confusion = np.diag([10, 10, 10, 10, 10, 0]).astype(np.int64)
    confusion[5, 0] = 10
    path = write_metrics_json(score_confusion(confusion, DATASET_INFOS["potsdam"]), tmp_path / "m.json", split="x")

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in strict JSON")

    report = json.loads(path.read_text(), parse_constant=no_constants)
    assert report["per_class"]["clutter"]["precision"] is None  # never predicted: 0/0 -> null, not NaN
    assert report["summary"]["miou"] == pytest.approx(0.9) and report["split"] == "x"


@pytest.fixture(scope="module")
def loveda_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("eval")
    root = prepared_fake("loveda", tmp / "data")
    config = tiny_config(tmp / "tiny.yaml", data={"name": "loveda", "root": str(root)},
                         run={"out_dir": str(tmp / "runs"), "name": "e"})  # fmt: skip
    assert train_main(["--config", str(config)]) == 0
    return tmp / "runs" / "e" / "best.pt", root


def test_val_split_scores_every_labelled_pixel(loveda_run: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, root = loveda_run
    code = evaluate_main(
        [str(checkpoint), "--split", "val", "--tta", "flip", "--out", str(tmp_path), "--device", "cpu"]
    )
    assert code == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    labelled = sum(
        int((np.asarray(Image.open(p)) != 255).sum()) for p in sorted((root / "val" / "masks").glob("*.png"))
    )
    assert int(np.asarray(report["confusion_matrix"]).sum()) == labelled
    assert report["split"] == "val" and report["tta"] == "flip"
    assert 0.0 <= report["oa"] <= 1.0
    assert (tmp_path / "confusion_matrix.png").is_file()


def test_hidden_test_labels_give_a_submission_zip_of_class_pngs(loveda_run: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, root = loveda_run
    archive = tmp_path / "submission.zip"
    code = evaluate_main([str(checkpoint), "--split", "test", "--submission", str(archive), "--out", str(tmp_path),
                          "--device", "cpu"])  # fmt: skip
    assert code == 0
    test_images = sorted(p.stem for p in (root / "test" / "images").iterdir())
    with zipfile.ZipFile(archive) as bundle:
        names = sorted(bundle.namelist())
        assert names == sorted(f"{stem}.png" for stem in test_images)  # at the zip root, named like the images
        for name in names:
            with bundle.open(name) as handle:
                labels = np.asarray(Image.open(handle))
            assert labels.dtype == np.uint8 and labels.shape == (32, 32)
            assert labels.max() < 7
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["pixel_count"] == 0 and report["miou"] is None  # nothing to score: labels are hidden


def test_missing_checkpoint_exits_2(tmp_path: Path) -> None:
    assert evaluate_main([str(tmp_path / "none.pt")]) == 2


def test_nan_free_summary_when_everything_is_scored() -> None:
    info = DATASET_INFOS["loveda"]
    summary = metrics_summary(score_confusion(np.eye(7, dtype=np.int64) * 5, info))
    assert summary["miou"] == 1.0 and not any(math.isnan(v) for v in summary.values())
    assert "miou_all" not in summary  # LoveDA averages over every class already

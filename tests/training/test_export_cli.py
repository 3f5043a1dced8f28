"""``python -m training.export``: checkpoint -> ONNX with the card, parity-checked, optional int8 copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.model_card import ModelCard, read_card
from engine.models import create_model
from tests.training.trainer_helpers import TINY_HI_RESNET, write_colour_mask_fake
from training.checkpoints import save_checkpoint
from training.datasets.colour_masks import DUBAI_CLASSES
from training.export import calibration_inputs, main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelCard]:
    torch.manual_seed(0)
    model = create_model("hi_resnet_small", num_classes=4, **TINY_HI_RESNET).eval()
    card = ModelCard(
        name="tiny export test",
        architecture="hi_resnet_small",
        architecture_args=TINY_HI_RESNET,
        class_names=("a", "b", "c", "d"),
        class_colors=("#000000", "#ff0000", "#00ff00", "#0000ff"),
        tile_size_px=32,
        overlap_px=8,
        size_divisor_px=16,
        metrics={"val_miou": 0.5},
        license="CC0-1.0",
    )
    path = tmp_path_factory.mktemp("export") / "best.pt"
    save_checkpoint(path, model=model, card=card, config={"model": {"name": "hi_resnet_small"}})
    return path, card


def test_export_writes_onnx_with_the_card_and_matching_logits(
    checkpoint: tuple[Path, ModelCard], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, card = checkpoint
    onnx_path = tmp_path / "model.onnx"
    assert main([str(path), "-o", str(onnx_path), "--card-json", str(tmp_path / "card.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity"]["max_abs_diff"] < 1e-3
    exported = read_card(onnx_path)
    assert exported.class_names == card.class_names
    assert exported.metrics == card.metrics
    assert exported.license == "CC0-1.0"
    assert exported.weights_sha256  # filled in by the export
    assert json.loads((tmp_path / "card.json").read_text())["class_names"] == list(card.class_names)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": np.zeros((2, 3, 48, 64), dtype=np.float32)})
    assert logits.shape == (2, 4, 48, 64)


def test_dynamic_int8_export_is_smaller_and_carries_the_card(
    checkpoint: tuple[Path, ModelCard], tmp_path: Path
) -> None:
    path, card = checkpoint
    onnx_path = tmp_path / "model.onnx"
    assert main([str(path), "-o", str(onnx_path), "--int8", "dynamic"]) == 0
    int8_path = tmp_path / "model.int8.onnx"
    assert int8_path.stat().st_size < onnx_path.stat().st_size
    assert read_card(int8_path).class_names == card.class_names
    assert "dynamic" in read_card(int8_path).description


def test_static_int8_needs_the_training_data_and_says_how_to_do_without(
    checkpoint: tuple[Path, ModelCard], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = checkpoint  # its config names no dataset root
    assert main([str(path), "-o", str(tmp_path / "model.onnx"), "--int8"]) == 2
    assert "--int8 dynamic" in capsys.readouterr().err


@pytest.fixture(scope="module")
def dubai_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelCard, Path]:
    """A tiny 5-class model whose checkpoint config points at a fake Dubai tree (tile 2 val, tile 3 test)."""
    folder = tmp_path_factory.mktemp("dubai_export")
    root = write_colour_mask_fake(folder / "dubai", size=(24, 48))  # 24 px high: smaller than a 32 px tile
    torch.manual_seed(0)
    names = tuple(name for name, _ in DUBAI_CLASSES)
    model = create_model("hi_resnet_small", num_classes=len(names), **TINY_HI_RESNET).eval()
    card = ModelCard(name="tiny dubai", architecture="hi_resnet_small", architecture_args=TINY_HI_RESNET,
                     class_names=names, class_colors=("#000000",) * len(names), tile_size_px=32, overlap_px=8,
                     size_divisor_px=16)  # fmt: skip
    config = {"data": {"name": "dubai_aerial", "root": str(root), "options": {"val_tiles": [2], "test_tiles": [3]}},
              "model": {"name": "hi_resnet_small", "options": TINY_HI_RESNET}}  # fmt: skip
    path = folder / "best.pt"
    save_checkpoint(path, model=model, card=card, config=config)
    return path, card, root


def test_calibration_crops_come_from_training_tiles_padded_to_a_tile(
    dubai_checkpoint: tuple[Path, ModelCard, Path],
) -> None:
    path, card, _ = dubai_checkpoint
    crops = calibration_inputs(torch.load(path, map_location="cpu", weights_only=True), card, count=6)
    assert len(crops) == 6
    assert all(c.shape == (1, 3, 32, 32) and c.dtype == np.float32 for c in crops)
    # Images are 24 px high: rows 24-31 are zero padding, rows above are normalised image values.
    assert all(np.all(c[:, :, 24:] == 0) and np.any(c[:, :, :24] != 0) for c in crops)


def test_static_int8_export_is_quantised_with_qdq_nodes_and_carries_the_card(
    dubai_checkpoint: tuple[Path, ModelCard, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    path, card, _ = dubai_checkpoint
    onnx_path = tmp_path / "model.onnx"
    assert main([str(path), "-o", str(onnx_path), "--int8"]) == 0
    report = json.loads(capsys.readouterr().out)
    int8_path = tmp_path / "model.int8.onnx"
    assert report["int8_mode"] == "static" and Path(report["int8_onnx"]) == int8_path
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_card = read_card(int8_path)
    assert int8_card.class_names == card.class_names and "static" in int8_card.description
    session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": np.zeros((1, 3, 32, 64), dtype=np.float32)})
    assert logits.shape == (1, 5, 32, 64)


def test_bad_output_name_and_missing_checkpoint_exit_2(checkpoint: tuple[Path, ModelCard], tmp_path: Path) -> None:
    path, _ = checkpoint
    assert main([str(path), "-o", str(tmp_path / "model.pt")]) == 2
    assert main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert not (tmp_path / "m.onnx").exists()


def test_card_metrics_replace_the_checkpoints_own(checkpoint: tuple[Path, ModelCard], tmp_path: Path) -> None:
    path, _ = checkpoint
    metrics = tmp_path / "card_metrics.json"
    metrics.write_text(json.dumps({"fold_mean_miou": 0.61, "fold1_miou": 0.58}))
    onnx_path = tmp_path / "m.onnx"
    text = "all seven tiles; the last checkpoint"
    assert main([str(path), "-o", str(onnx_path), "--card-metrics", str(metrics), "--training-data", text]) == 0
    assert dict(read_card(onnx_path).metrics) == {"fold_mean_miou": 0.61, "fold1_miou": 0.58}  # val_miou gone
    assert read_card(onnx_path).training_data == text


@pytest.mark.parametrize("text", ["not json", '["a"]', '{"miou": "high"}', '{"miou": NaN}'])
def test_bad_card_metrics_exit_2_naming_the_file(
    checkpoint: tuple[Path, ModelCard], tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = checkpoint
    metrics = tmp_path / "metrics.json"
    metrics.write_text(text)
    assert main([str(path), "-o", str(tmp_path / "m.onnx"), "--card-metrics", str(metrics)]) == 2
    assert "metrics.json" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()

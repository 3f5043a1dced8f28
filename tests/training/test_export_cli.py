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
from tests.training.trainer_helpers import TINY_HI_RESNET
from training.checkpoints import save_checkpoint
from training.export import main


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


def test_int8_export_is_smaller_and_carries_the_card(checkpoint: tuple[Path, ModelCard], tmp_path: Path) -> None:
    path, card = checkpoint
    onnx_path = tmp_path / "model.onnx"
    assert main([str(path), "-o", str(onnx_path), "--int8"]) == 0
    int8_path = tmp_path / "model.int8.onnx"
    assert int8_path.stat().st_size < onnx_path.stat().st_size
    assert read_card(int8_path).class_names == card.class_names


def test_bad_output_name_and_missing_checkpoint_exit_2(checkpoint: tuple[Path, ModelCard], tmp_path: Path) -> None:
    path, _ = checkpoint
    assert main([str(path), "-o", str(tmp_path / "model.pt")]) == 2
    assert main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert not (tmp_path / "m.onnx").exists()

"""MoCo v2 pre-training: momentum update, queue, InfoNCE, the command line, and loading the backbone back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine.errors import ModelLoadError
from engine.models import create_model
from tests.training.trainer_helpers import TINY_HI_RESNET
from training.pretrain import MoCo, backbone_state_dict, load_backbone_weights, main, two_views


def _tiny_model() -> nn.Module:
    return create_model("hi_resnet_small", num_classes=3, **TINY_HI_RESNET)


def test_key_encoder_trails_the_query_encoder_by_the_momentum() -> None:
    torch.manual_seed(0)
    moco = MoCo(_tiny_model(), sample_size_px=32, dim=8, queue_size=16, momentum=0.9)
    with torch.no_grad():
        for param in moco.encoder_q.parameters():
            param.add_(1.0)  # make the two encoders differ
    before_q = [p.detach().clone() for p in moco.encoder_q.parameters()]
    before_k = [p.detach().clone() for p in moco.encoder_k.parameters()]
    moco(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    for q, k, k_after in zip(before_q, before_k, moco.encoder_k.parameters(), strict=True):
        torch.testing.assert_close(k_after.detach(), 0.9 * k + 0.1 * q)


def test_queue_receives_the_normalised_keys_and_wraps_around() -> None:
    torch.manual_seed(0)
    moco = MoCo(_tiny_model(), sample_size_px=32, dim=8, queue_size=3)
    loss, accuracy = moco(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert torch.isfinite(loss) and 0.0 <= float(accuracy) <= 1.0
    assert int(moco.queue_ptr) == 2
    moco(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert int(moco.queue_ptr) == 1  # (2 + 2) mod 3
    norms = moco.queue.norm(dim=0)
    torch.testing.assert_close(norms, torch.ones(3))


def test_infonce_is_log_of_candidates_when_every_logit_is_equal() -> None:
    # With an all-constant head every similarity is equal, so InfoNCE = log(1 + queue size).
    moco = MoCo(_tiny_model(), sample_size_px=32, dim=4, queue_size=7)
    for encoder in (moco.encoder_q, moco.encoder_k):
        last = encoder.head[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(1.0)
    moco.queue.copy_(torch.full_like(moco.queue, 0.5))  # unit columns (4 x 0.25 = 1) equal to every key
    loss, _ = moco(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert loss.item() == pytest.approx(np.log(8.0), rel=1e-5)


def test_two_views_are_normalised_crops_of_the_requested_size() -> None:
    batch = torch.rand(3, 3, 40, 50)
    first, second = two_views(batch, 32, torch.Generator().manual_seed(1), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert first.shape == second.shape == (3, 3, 32, 32)
    assert float(first.min()) >= -2.0 - 1e-6 and float(first.max()) <= 2.0 + 1e-6  # (x - 0.5) / 0.25 of [0, 1]
    assert not torch.equal(first, second)


def test_backbone_weights_exclude_the_heads_and_load_back_into_a_fresh_model(tmp_path: Path) -> None:
    model = _tiny_model()
    weights = backbone_state_dict(model, sample_size_px=32)
    assert weights and not any(k.startswith(("coarse_head.", "refined_head.", "classifier.")) for k in weights)
    assert any(k.startswith("stem.") for k in weights)
    torch.save({"state_dict": weights}, tmp_path / "b.pt")
    fresh = _tiny_model()
    report = load_backbone_weights(fresh, tmp_path / "b.pt")
    assert set(report.loaded) == set(weights)
    assert report.unexpected == ()
    assert all(k.startswith(("coarse_head.", "refined_head.", "classifier.")) for k in report.missing)
    for key, value in weights.items():
        torch.testing.assert_close(fresh.state_dict()[key], value)


def test_reference_moco_prefixes_are_stripped_and_heads_and_misfits_reported(tmp_path: Path) -> None:
    model = _tiny_model()
    state = model.state_dict()
    stem_key = next(k for k in state if k.startswith("stem.") and k.endswith("weight"))
    reference = {
        f"module.encoder_q.{stem_key}": torch.ones_like(state[stem_key]),
        "module.encoder_q.fc.0.weight": torch.zeros(4, 4),  # projection head: dropped silently
        "module.encoder_q.funnel.0.not_a_param": torch.zeros(1),  # unknown: reported
        f"module.encoder_q.{next(iter(k for k in state if k.startswith('classifier')))}": torch.zeros(1),  # bad shape
    }
    torch.save({"state_dict": reference}, tmp_path / "moco.pth")
    report = load_backbone_weights(model, tmp_path / "moco.pth")
    assert report.loaded == (stem_key,)
    assert len(report.unexpected) == 2
    assert torch.equal(model.state_dict()[stem_key], torch.ones_like(state[stem_key]))
    torch.save({"state_dict": {"nothing.matches": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="No weights"):
        load_backbone_weights(model, tmp_path / "bad.pt")


def test_command_line_pretrains_and_writes_a_loadable_backbone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images" / "nested"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)).save(images / f"{i}.png")
    output = tmp_path / "backbone.pt"
    args = [str(tmp_path / "images"), "-o", str(output), "--model", "hi_resnet_small", "--size", "32",
            "--batch-size", "2", "--max-steps", "2", "--queue", "8", "--num-workers", "0", "--device", "cpu",
            *[f"--model-option={k}={json.dumps(v)}" for k, v in TINY_HI_RESNET.items()]]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["images"] == 4
    report = load_backbone_weights(_tiny_model(), output)
    assert len(report.loaded) == summary["tensors"] and report.unexpected == ()


def test_empty_image_folder_exits_2(tmp_path: Path) -> None:
    assert main([str(tmp_path), "-o", str(tmp_path / "b.pt"), "--device", "cpu"]) == 2

"""Hi-ResNet and BiCoR-Seg total losses, LossConfig and build_loss."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import InvalidInputError
from engine.models.outputs import SegmentationOutput
from training.losses import BiCoRSegLoss, HiResNetLoss, LossConfig, ReferenceLoss, build_loss, resolve_model_family

IGNORE = 255
K = 3


def logits_from_probs(probs: list[list[list[float]]]) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64)).unsqueeze(0)


# 2x2, two classes, p(class 1) = [[0.8, 0.3], [0.5, 0.9]], pixel (1, 0) ignored (as in test_losses_ce_dice).
P1 = [[0.8, 0.3], [0.5, 0.9]]
TWO_CLASS_LOGITS = logits_from_probs([[[1 - v for v in row] for row in P1], P1])
TWO_CLASS_TARGET = torch.tensor([[[1, 0], [IGNORE, 1]]])
TWO_CLASS_LSCE = (
    -(0.05 * math.log(0.2) + 0.95 * math.log(0.8))
    - (0.95 * math.log(0.7) + 0.05 * math.log(0.3))
    - (0.05 * math.log(0.1) + 0.95 * math.log(0.9))
) / 3
#: The same pixels under Hi-ResNet's eq. 4 (the family default): 1 - ε = 0.9 on the label, ε / (K - 1) = 0.1 else.
TWO_CLASS_LSCE_EQ4 = (
    -(0.1 * math.log(0.2) + 0.9 * math.log(0.8))
    - (0.9 * math.log(0.7) + 0.1 * math.log(0.3))
    - (0.1 * math.log(0.1) + 0.9 * math.log(0.9))
) / 3


def random_target(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, (batch, size, size), generator=generator)
    target[0, :3, :5] = IGNORE
    return target


def hi_resnet_output(batch: int = 2, size: int = 16, grad: bool = False) -> SegmentationOutput:
    refined = torch.randn(batch, K, size, size, requires_grad=grad)
    coarse = torch.randn(batch, K, size, size, requires_grad=grad)
    return SegmentationOutput(logits=refined, aux_logits=coarse, refined_logits=refined)


def bicorseg_output(batch: int = 2, size: int = 16, layers: int = 2, grad: bool = False) -> SegmentationOutput:
    return SegmentationOutput(
        logits=torch.randn(batch, K, size, size, requires_grad=grad),
        aux_logits=torch.randn(batch, K, size, size, requires_grad=grad),
        heatmaps=tuple(torch.randn(batch, K, size // 4, size // 4, requires_grad=grad) for _ in range(layers)),
        class_embeddings=tuple(torch.randn(batch, K, 8, requires_grad=grad) for _ in range(layers)),
    )


@pytest.mark.parametrize(
    ("name", "family", "cls"),
    [
        ("hi_resnet", "hi_resnet", HiResNetLoss),
        ("hi_resnet_small", "hi_resnet", HiResNetLoss),
        ("hi_resnet_ca", "hi_resnet", HiResNetLoss),
        ("bicorseg", "bicorseg", BiCoRSegLoss),
        ("bicorseg_small", "bicorseg", BiCoRSegLoss),
        ("bicorseg_hi_resnet", "bicorseg", BiCoRSegLoss),
        ("bicorseg_small_lu", "bicorseg", BiCoRSegLoss),
        ("unet", "reference", ReferenceLoss),
    ],
)
def test_build_loss_maps_model_variants_to_their_family(name, family, cls):
    assert resolve_model_family(name) == family
    assert isinstance(build_loss(model_family=name, cfg=LossConfig(num_classes=K)), cls)
    assert isinstance(build_loss(name, LossConfig(num_classes=K)), cls)


def test_build_loss_rejects_unknown_models():
    with pytest.raises(InvalidInputError, match="hi_resnet"):
        build_loss("segformer", LossConfig(num_classes=K))


def test_hi_resnet_total_uses_paper_weights_on_both_heads():
    torch.manual_seed(0)
    total, parts = build_loss("hi_resnet", LossConfig(num_classes=K, cea_seed=0))(hi_resnet_output(), random_target())
    for head in ("refined", "coarse"):
        expected_head = 0.3923 * parts[f"{head}_gd"] + 0.3923 * parts[f"{head}_lsce"] + 0.2153 * parts[f"{head}_cea"]
        assert parts[f"{head}_head"] == pytest.approx(expected_head, rel=1e-6)
    assert total.item() == pytest.approx(parts["refined_head"] + parts["coarse_head"], rel=1e-6)
    assert parts["total"] == pytest.approx(total.item())
    assert "lossd" not in parts


def test_hi_resnet_head_terms_match_hand_values():
    output = SegmentationOutput(logits=TWO_CLASS_LOGITS, aux_logits=TWO_CLASS_LOGITS)
    gd_only = HiResNetLoss(LossConfig(num_classes=2, head_weights=(1.0, 0.0, 0.0), coarse_weight=0.0))
    assert gd_only(output, TWO_CLASS_TARGET)[0].item() == pytest.approx(0.25)
    lsce_only = HiResNetLoss(LossConfig(num_classes=2, head_weights=(0.0, 1.0, 0.0)))
    assert lsce_only(output, TWO_CLASS_TARGET)[0].item() == pytest.approx(2 * TWO_CLASS_LSCE_EQ4, rel=1e-12)
    geoseg = HiResNetLoss(LossConfig(num_classes=2, head_weights=(0.0, 1.0, 0.0), smoothing_spread="uniform"))
    assert geoseg(output, TWO_CLASS_TARGET)[0].item() == pytest.approx(2 * TWO_CLASS_LSCE, rel=1e-12)


def test_hi_resnet_cea_class_draw_is_reproducible_with_a_seed():
    torch.manual_seed(1)
    output, target = hi_resnet_output(), random_target()
    a = build_loss("hi_resnet", LossConfig(num_classes=K, cea_seed=5))
    b = build_loss("hi_resnet", LossConfig(num_classes=K, cea_seed=5))
    assert [a(output, target)[0].item() for _ in range(3)] == [b(output, target)[0].item() for _ in range(3)]


def test_lossd_is_added_to_refined_and_optionally_coarse_logits():
    target = torch.tensor([[[1, 1, 1, 1, 0, 0, 0, 0]]])
    p = torch.tensor([0.9, 0.8, 0.3, 0.2, 0.1, 0.4, 0.6, 0.3], dtype=torch.float64)
    logits = torch.log(torch.stack([1 - p, p])).view(1, 2, 1, 8)
    lossd = (math.log(3) + math.log(2) + math.log(4)) / (8 * math.log(51))  # see test_losses_distance
    output = SegmentationOutput(logits=logits, aux_logits=logits)
    cfg = LossConfig(num_classes=2, head_weights=(0.0, 0.0, 0.0), lossd_weight=2.0)
    total, parts = HiResNetLoss(cfg)(output, target)
    assert total.item() == pytest.approx(2.0 * lossd, rel=1e-12)
    assert parts["lossd"] == pytest.approx(lossd, rel=1e-12)
    cfg_coarse = LossConfig(num_classes=2, head_weights=(0.0, 0.0, 0.0), lossd_weight=2.0, lossd_on_coarse=True)
    assert HiResNetLoss(cfg_coarse)(output, target)[0].item() == pytest.approx(4.0 * lossd, rel=1e-12)
    bicor = BiCoRSegLoss(LossConfig(num_classes=2, lossd_weight=0.5))
    total_b, parts_b = bicor(SegmentationOutput(logits=logits), target)
    assert total_b.item() == pytest.approx(parts_b["seg_ce"] + parts_b["seg_dice"] + 0.5 * lossd, rel=1e-9)


def test_hi_resnet_eval_output_scores_only_the_main_logits():
    torch.manual_seed(2)
    total, parts = build_loss("hi_resnet", LossConfig(num_classes=K))(
        SegmentationOutput(logits=torch.randn(1, K, 8, 8)), random_target(1, 8)
    )
    assert not any(key.startswith("coarse") for key in parts)
    assert total.item() == pytest.approx(parts["refined_head"], rel=1e-6)


def test_perfect_prediction_makes_dice_cea_and_lossd_vanish():
    target = random_target()
    perfect = 30.0 * torch.nn.functional.one_hot(target.clamp_max(K - 1), K).permute(0, 3, 1, 2).float()
    output = SegmentationOutput(logits=perfect, aux_logits=perfect)
    _, parts = build_loss("hi_resnet", LossConfig(num_classes=K, lossd_weight=1.0))(output, target)
    for key in ("refined_gd", "refined_cea", "coarse_gd", "coarse_cea", "lossd"):
        assert parts[key] == pytest.approx(0.0, abs=1e-6), key


def test_bicorseg_total_combines_terms_with_code_weights():
    torch.manual_seed(3)
    cfg = LossConfig(num_classes=K, has_fisher_loss=True, lossd_weight=1.0)
    total, parts = build_loss("bicorseg", cfg)(bicorseg_output(layers=3), random_target())
    expected = (
        parts["seg_ce"]
        + parts["seg_dice"]
        + 0.4 * parts["aux_ce"]
        + 0.1 * (parts["heatmap_l1"] + parts["heatmap_l2"] + parts["heatmap_l3"])
        + 0.1 * (parts["fisher_l1"] + parts["fisher_l2"] + parts["fisher_l3"])
        + 1.0 * parts["fisher_l3"]
        + 1.0 * parts["lossd"]
    )
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["heatmap"] == pytest.approx(parts["heatmap_l1"] + parts["heatmap_l2"] + parts["heatmap_l3"])


def test_bicorseg_layer_weights_apply_and_must_match_the_layer_count():
    torch.manual_seed(4)
    output, target = bicorseg_output(layers=2), random_target()
    cfg = LossConfig(num_classes=K, heatmap_betas=[2.0, 0.0], fisher_alphas=[0.0, 3.0])
    total, parts = build_loss("bicorseg", cfg)(output, target)
    expected = (
        parts["seg_ce"]
        + parts["seg_dice"]
        + 0.4 * parts["aux_ce"]
        + 0.1 * 2.0 * parts["heatmap_l1"]
        + 0.1 * 3.0 * parts["fisher_l2"]
    )
    assert total.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InvalidInputError, match="heatmap_betas has 3 entries"):
        build_loss("bicorseg", LossConfig(num_classes=K, heatmap_betas=(1.0, 1.0, 1.0)))(output, target)


@pytest.mark.parametrize(("compat", "ce_divisor"), [(True, 16), (False, 15)])
def test_bicorseg_ce_and_dice_of_uniform_logits_match_hand_values(compat, ce_divisor):
    # Labels 4x4: 8 px class 0, 7 px class 1, 1 ignored; uniform logits -> every valid pixel costs ln 2.
    target = torch.tensor([[[0] * 4, [0] * 4, [1] * 4, [1, 1, 1, IGNORE]]])
    logits = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    ce = math.log(2) * 15 / ce_divisor
    dice = (2 - (8 + 0.05) / (7.5 + 8 + 0.05) - (7 + 0.05) / (7.5 + 7 + 0.05)) / 2
    cfg = LossConfig(num_classes=2, geoseg_compat=compat)
    total, parts = BiCoRSegLoss(cfg)(SegmentationOutput(logits=logits, aux_logits=logits), target)
    assert parts["seg_ce"] == pytest.approx(ce, rel=1e-12)
    assert parts["aux_ce"] == pytest.approx(ce, rel=1e-12)
    assert parts["seg_dice"] == pytest.approx(dice, rel=1e-12)
    assert total.item() == pytest.approx(1.4 * ce + dice, rel=1e-12)


def test_bicorseg_single_image_batch_skips_fisher(caplog):
    total, parts = build_loss("bicorseg", LossConfig(num_classes=K, has_fisher_loss=True))(
        bicorseg_output(batch=1), random_target(batch=1)
    )
    assert parts["fisher_l1"] == 0.0 and parts["fisher_l2"] == 0.0
    assert "Fisher loss skipped" in caplog.text
    assert math.isfinite(total.item())


def test_bicorseg_eval_output_leaves_out_training_only_terms():
    output = bicorseg_output()
    eval_output = SegmentationOutput(logits=output.logits, heatmaps=output.heatmaps)
    _, parts = build_loss("bicorseg", LossConfig(num_classes=K))(eval_output, random_target())
    assert "aux_ce" not in parts and not any(key.startswith("fisher") for key in parts)
    assert "heatmap_l2" in parts


@pytest.mark.parametrize("name", ["hi_resnet", "bicorseg"])
def test_total_losses_backpropagate_finite_gradients_into_every_output(name):
    torch.manual_seed(5)
    output = hi_resnet_output(grad=True) if name == "hi_resnet" else bicorseg_output(grad=True)
    total, _ = build_loss(name, LossConfig(num_classes=K, lossd_weight=1.0, cea_seed=0))(output, random_target())
    total.backward()
    tensors = [output.logits, output.aux_logits, *output.heatmaps, *output.class_embeddings]
    for tensor in tensors:
        assert tensor is not None and tensor.grad is not None
        assert torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["hi_resnet", "bicorseg"])
def test_logits_at_ignored_pixels_do_not_change_the_total(name):
    torch.manual_seed(6)
    output = hi_resnet_output() if name == "hi_resnet" else bicorseg_output()
    target = random_target()
    ignored = (target == IGNORE).unsqueeze(1)
    assert output.aux_logits is not None
    changed = SegmentationOutput(
        logits=torch.where(ignored, 50 * torch.randn_like(output.logits), output.logits),
        aux_logits=torch.where(ignored, 50 * torch.randn_like(output.aux_logits), output.aux_logits),
        heatmaps=output.heatmaps,
        class_embeddings=output.class_embeddings,
    )
    cfg = LossConfig(num_classes=K, lossd_weight=1.0, cea_seed=9)
    before = build_loss(name, cfg)(output, target)[0].item()
    after = build_loss(name, cfg)(changed, target)[0].item()
    assert after == pytest.approx(before, rel=1e-6)


def test_logits_at_the_wrong_resolution_are_rejected():
    output = SegmentationOutput(logits=torch.randn(2, K, 8, 8))
    with pytest.raises(InvalidInputError, match="label resolution"):
        build_loss("bicorseg", LossConfig(num_classes=K))(output, random_target())


def test_loss_config_normalises_sequences_and_rejects_bad_values():
    cfg = LossConfig(num_classes=K, heatmap_betas=[1, 2], lossd_class_weights=[1, 1, 2])
    assert cfg.heatmap_betas == (1.0, 2.0) and cfg.lossd_class_weights == (1.0, 1.0, 2.0)
    assert cfg.smoothing_for("hi_resnet") == 0.1 and cfg.smoothing_for("bicorseg") == 0.05
    assert LossConfig(num_classes=K, label_smoothing=0.2).smoothing_for("bicorseg") == 0.2
    bad = [
        ({"ignore_index": 1}, "also a class index"),
        ({"aux_weight": -1.0}, "aux_weight"),
        ({"head_weights": (1.0, 1.0)}, "three"),
        ({"lossd_class_weights": (1.0,)}, "one weight per class"),
        ({"lossd_max_iter": 0}, "lossd_max_iter"),
        ({"cea_max_distance_px": 300}, "from 1 to 255"),
        ({"lossd_downsample": 0}, "lossd_downsample"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
    ]
    for kwargs, message in bad:
        with pytest.raises(InvalidInputError, match=message):
            LossConfig(num_classes=K, **kwargs)

"""Label-smoothed CE, generalised Dice and GeoSeg soft Dice against hand-computed 2x2 cases."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import InvalidInputError
from training.losses import generalized_dice_loss, label_smoothed_cross_entropy, soft_dice_loss

IGNORE = 255


def logits_from_probs(probs: list[list[list[float]]]) -> torch.Tensor:
    """(K, H, W) probabilities -> (1, K, H, W) logits whose softmax is exactly those probabilities."""
    return torch.log(torch.tensor(probs, dtype=torch.float64)).unsqueeze(0)


# Two classes on a 2x2 image; p(class 1) = [[0.8, 0.3], [0.5, 0.9]], one ignored pixel at (1, 0).
P1 = [[0.8, 0.3], [0.5, 0.9]]
TWO_CLASS_LOGITS = logits_from_probs([[[1 - v for v in row] for row in P1], P1])
TWO_CLASS_TARGET = torch.tensor([[[1, 0], [IGNORE, 1]]])

# Three classes on a 2x2 image, class 2 absent from the labels; per-pixel (p0, p1, p2).
THREE_CLASS_PIXELS = [[(0.7, 0.2, 0.1), (0.5, 0.25, 0.25)], [(0.6, 0.2, 0.2), (0.1, 0.8, 0.1)]]
THREE_CLASS_LOGITS = logits_from_probs([[[px[c] for px in row] for row in THREE_CLASS_PIXELS] for c in range(3)])
THREE_CLASS_TARGET = torch.tensor([[[0, 0], [0, 1]]])


def smoothed_ce_by_hand(eps: float, k: int, probs: tuple[float, ...], label: int) -> float:
    """-Σ_c q_c log p_c with q = (1 - eps) onehot + eps / K."""
    return -sum(((1 - eps) * (c == label) + eps / k) * math.log(p) for c, p in enumerate(probs))


def test_label_smoothed_ce_averages_over_valid_pixels_only():
    terms = [
        smoothed_ce_by_hand(0.1, 2, (0.2, 0.8), 1),
        smoothed_ce_by_hand(0.1, 2, (0.7, 0.3), 0),
        smoothed_ce_by_hand(0.1, 2, (0.1, 0.9), 1),
    ]
    loss = label_smoothed_cross_entropy(TWO_CLASS_LOGITS, TWO_CLASS_TARGET, 0.1, IGNORE, "valid")
    assert loss.item() == pytest.approx(sum(terms) / 3, rel=1e-12)


def test_geoseg_soft_ce_averages_over_all_pixels_with_ignored_as_zero():
    terms = [
        smoothed_ce_by_hand(0.05, 2, (0.2, 0.8), 1),
        smoothed_ce_by_hand(0.05, 2, (0.7, 0.3), 0),
        smoothed_ce_by_hand(0.05, 2, (0.1, 0.9), 1),
    ]
    loss = label_smoothed_cross_entropy(TWO_CLASS_LOGITS, TWO_CLASS_TARGET, 0.05, IGNORE, "all")
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-12)


def test_label_smoothed_ce_matches_torch_reference_with_ignore_index():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 5, 5))
    target[0, :2] = IGNORE
    expected = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, label_smoothing=0.1)
    assert label_smoothed_cross_entropy(logits, target, 0.1, IGNORE).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_label_smoothed_ce_rejects_smoothing_outside_unit_interval(smoothing):
    with pytest.raises(InvalidInputError, match="label smoothing"):
        label_smoothed_cross_entropy(TWO_CLASS_LOGITS, TWO_CLASS_TARGET, smoothing, IGNORE)


def test_generalized_dice_two_class_hand_value():
    # Valid pixels: class 0 -> g=[0,1,0], p0=[0.2,0.7,0.1], w0=1; class 1 -> g=[1,0,1], p1=[0.8,0.3,0.9], w1=1/4.
    # numerator 2*(1*0.7 + 0.25*1.7) = 2.25; denominator 1*(1+1) + 0.25*(2+2) = 3 -> 1 - 0.75.
    assert generalized_dice_loss(TWO_CLASS_LOGITS, TWO_CLASS_TARGET, IGNORE).item() == pytest.approx(0.25)


def test_generalized_dice_gives_absent_class_the_largest_present_weight():
    # n = (3, 1, 0) -> w = (1/9, 1, max present = 1); I = (1.8, 0.8, 0); P = (1.9, 1.45, 0.65).
    numerator = 2 * (1.8 / 9 + 0.8 * 1 + 0.0 * 1)
    denominator = (1.9 + 3) / 9 + (1.45 + 1) * 1 + (0.65 + 0) * 1
    loss = generalized_dice_loss(THREE_CLASS_LOGITS, THREE_CLASS_TARGET, IGNORE)
    assert loss.item() == pytest.approx(1 - numerator / denominator, rel=1e-12)


def test_soft_dice_two_class_hand_value():
    # class 0: I=0.7, P+G=2.0; class 1: I=1.7, P+G=4.0; smooth 0.05.
    per_class = [1 - (2 * 0.7 + 0.05) / (2.0 + 0.05), 1 - (2 * 1.7 + 0.05) / (4.0 + 0.05)]
    loss = soft_dice_loss(TWO_CLASS_LOGITS, TWO_CLASS_TARGET, IGNORE, smooth=0.05)
    assert loss.item() == pytest.approx(sum(per_class) / 2, rel=1e-12)


@pytest.mark.parametrize(("count_absent", "divisor"), [(True, 3), (False, 2)])
def test_soft_dice_zeroes_absent_classes_and_counts_them_only_in_geoseg_mode(count_absent, divisor):
    # class 0: I=1.8, P+G=4.9; class 1: I=0.8, P+G=2.45; class 2 absent -> 0.
    per_class = [1 - (3.6 + 0.05) / (4.9 + 0.05), 1 - (1.6 + 0.05) / (2.45 + 0.05), 0.0]
    loss = soft_dice_loss(THREE_CLASS_LOGITS, THREE_CLASS_TARGET, IGNORE, count_absent_classes=count_absent)
    assert loss.item() == pytest.approx(sum(per_class) / divisor, rel=1e-12)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda x, y: label_smoothed_cross_entropy(x, y, 0.1, IGNORE, "valid"),
        lambda x, y: label_smoothed_cross_entropy(x, y, 0.05, IGNORE, "all"),
        lambda x, y: generalized_dice_loss(x, y, IGNORE),
        lambda x, y: soft_dice_loss(x, y, IGNORE),
    ],
)
def test_logits_at_ignored_pixels_do_not_change_the_loss_or_get_gradient(loss_fn):
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[1, 2:, :] = IGNORE
    changed = logits.detach().clone()
    changed[1, :, 2:, :] = torch.randn(3, 2, 4, dtype=torch.float64) * 10
    assert loss_fn(changed, target).item() == pytest.approx(loss_fn(logits.detach(), target).item(), rel=1e-12)
    loss_fn(logits, target).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[1, :, 2:, :] == 0)
    assert logits.grad[0].abs().sum() > 0


def test_dice_losses_vanish_on_a_confident_correct_prediction():
    target = torch.tensor([[[0, 1, 1], [2, 2, 1], [0, IGNORE, 2]]])
    logits = 30.0 * torch.nn.functional.one_hot(target.clamp_max(2), 3).permute(0, 3, 1, 2).double()
    assert generalized_dice_loss(logits, target, IGNORE).item() == pytest.approx(0.0, abs=1e-9)
    assert soft_dice_loss(logits, target, IGNORE).item() == pytest.approx(0.0, abs=1e-9)


def test_losses_of_an_all_ignored_batch_are_zero_and_differentiable():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), IGNORE)
    for loss in (
        label_smoothed_cross_entropy(logits, target, 0.1, IGNORE),
        generalized_dice_loss(logits, target, IGNORE),
        soft_dice_loss(logits, target, IGNORE),
    ):
        assert loss.item() == 0.0
        loss.backward()


def test_label_smoothing_spread_over_other_classes_matches_hi_resnet_eq_4_by_hand() -> None:
    import math

    from training.losses import LossConfig
    from training.losses.cross_entropy import label_smoothed_cross_entropy

    # One labelled pixel (class 0) with softmax (1/7, 2/7, 4/7), one ignored pixel; ε = 0.1, K = 3.
    logits = torch.tensor([0.0, math.log(2.0), math.log(4.0)]).reshape(1, 3, 1, 1).repeat(1, 1, 1, 2)
    target = torch.tensor([[[0, 255]]])
    # eq. 4: 0.9 * ln 7 + (0.1 / 2) * (ln 3.5 + ln 1.75)
    paper = 0.9 * 1.945910149 + 0.05 * (1.252762968 + 0.559615788)
    # GeoSeg / torch: 0.9 * ln 7 + (0.1 / 3) * (ln 7 + ln 3.5 + ln 1.75)
    geoseg = 0.9 * 1.945910149 + (0.1 / 3) * (1.945910149 + 1.252762968 + 0.559615788)
    others = label_smoothed_cross_entropy(logits, target, 0.1, 255, "valid", "others")
    uniform = label_smoothed_cross_entropy(logits, target, 0.1, 255, "valid", "uniform")
    assert float(others) == pytest.approx(paper, abs=1e-6)
    assert float(uniform) == pytest.approx(geoseg, abs=1e-6)
    assert LossConfig(num_classes=3).spread_for("hi_resnet") == "others"
    assert LossConfig(num_classes=3).spread_for("bicorseg") == "uniform"
    assert LossConfig(num_classes=3, smoothing_spread="uniform").spread_for("hi_resnet") == "uniform"

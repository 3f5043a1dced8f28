"""Distance maps, CEA and Lossd against hand-computed rows and small images."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidInputError
from training.losses import (
    ClassAgnosticEdgeAwareLoss,
    class_agnostic_edge_aware_loss,
    distance_loss,
    inside_outside_distances,
    pick_present_class,
    region_depth,
    straight_through_mask,
)

IGNORE = 255


def row(values: list[int]) -> torch.Tensor:
    """A (1, 1, 1, W) boolean region from a 0/1 list."""
    return torch.tensor(values, dtype=torch.bool).view(1, 1, 1, -1)


def two_class_logits(p1: list[float]) -> torch.Tensor:
    """(1, 2, 1, W) logits of a row whose class-1 probabilities are ``p1``."""
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.log(torch.stack([1 - p, p])).view(1, 2, 1, -1)


def test_lossd_docstring_example_distances():
    d_in, d_out = inside_outside_distances(row([1, 1, 1, 1, 0, 0, 0, 0]), 50)
    assert d_in.flatten().tolist() == [4, 3, 2, 1, 0, 0, 0, 0]
    assert d_out.flatten().tolist() == [0, 0, 0, 0, 1, 2, 3, 4]


def test_single_pixel_region_distances_are_manhattan():
    region = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    region[0, 0, 1, 1] = True
    d_in, d_out = inside_outside_distances(region, 10)
    assert d_in[0, 0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert d_out[0, 0].tolist() == [[2, 1, 2], [1, 0, 1], [2, 1, 2]]


def test_depth_is_capped_and_a_full_image_region_is_never_eroded_from_the_border():
    assert region_depth(torch.ones(1, 1, 5, 5, dtype=torch.bool), 3).unique().tolist() == [3]
    assert region_depth(row([1] * 9), 4).flatten().tolist() == [4] * 9


def test_region_depth_rejects_bad_arguments():
    for cap in (0, 256):
        with pytest.raises(InvalidInputError, match="from 1 to 255"):
            region_depth(row([1, 0]), cap)
    with pytest.raises(InvalidInputError, match="boolean"):
        region_depth(row([1, 0]).float(), 5)


@st.composite
def mask_stacks(draw: st.DrawFn) -> list[list[list[bool]]]:
    """1-4 boolean masks of one random size up to 6x6 (several masks exercise the per-mask early stop)."""
    h, w, n = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    grid = st.lists(st.lists(st.booleans(), min_size=w, max_size=w), min_size=h, max_size=h)
    return draw(st.lists(grid, min_size=n, max_size=n))


def brute_force_depth(grid: list[list[bool]], cap: int) -> list[list[int]]:
    """min(cap, L1 distance to the nearest in-image pixel outside the region) inside it, 0 outside."""
    h, w = len(grid), len(grid[0])
    outside = [(y, x) for y in range(h) for x in range(w) if not grid[y][x]]
    return [
        [min([cap] + [abs(y - oy) + abs(x - ox) for oy, ox in outside]) if grid[y][x] else 0 for x in range(w)]
        for y in range(h)
    ]


@settings(max_examples=60, deadline=None)
@given(mask_stacks(), st.integers(1, 8))
def test_region_depth_equals_brute_force_manhattan_distance_to_the_outside(masks, cap):
    depth = region_depth(torch.tensor(masks, dtype=torch.bool).unsqueeze(0), cap)
    assert depth[0].tolist() == [brute_force_depth(grid, cap) for grid in masks]


def test_cea_row_hand_value():
    # G = [1,1,0,0] -> D_G = [2,1,1,2]; prediction [1,0,1,0] -> D_P = [1,1,1,1]; T = 4, alpha = 2.
    logits = two_class_logits([0.9, 0.4, 0.6, 0.2])
    target = torch.tensor([[[1, 1, 0, 0]]])
    errors = [0.1**2, 0.6**2, 0.6**2, 0.2**2]
    weights = [(2 / 4) ** 2 + (1 / 4) ** 2, (1 / 4) ** 2 * 2, (1 / 4) ** 2 * 2, (2 / 4) ** 2 + (1 / 4) ** 2]
    expected = sum(e * w for e, w in zip(errors, weights, strict=True)) / 4
    loss = class_agnostic_edge_aware_loss(logits, target, 1, IGNORE, max_distance_px=4, exponent=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.02640625)


def test_cea_excludes_ignored_pixels_and_treats_them_as_outside():
    # The ignored 5th pixel adds nothing to the mean (still /4) and whatever its logits are.
    target = torch.tensor([[[1, 1, 0, 0, IGNORE]]])
    a = class_agnostic_edge_aware_loss(two_class_logits([0.9, 0.4, 0.6, 0.2, 0.99]), target, 1, IGNORE, 4)
    b = class_agnostic_edge_aware_loss(two_class_logits([0.9, 0.4, 0.6, 0.2, 0.01]), target, 1, IGNORE, 4)
    # Pixel 3's distances change: outside G with an outside right neighbour -> D_G still 2; prediction region
    # [1,0,1,0,(outside)] -> D_P[3] = 1. So the hand value of the 4-pixel row holds.
    assert a.item() == pytest.approx(0.02640625, rel=1e-12)
    assert b.item() == pytest.approx(a.item(), rel=1e-12)


def test_cea_vanishes_on_a_confident_correct_prediction_and_has_finite_gradient():
    target = torch.tensor([[[0, 1, 1], [2, 2, 1], [0, IGNORE, 2]]])
    perfect = 30.0 * torch.nn.functional.one_hot(target.clamp_max(2), 3).permute(0, 3, 1, 2).double()
    for c in range(3):
        assert class_agnostic_edge_aware_loss(perfect, target, c, IGNORE).item() == pytest.approx(0.0, abs=1e-12)
    logits = torch.randn(1, 3, 3, 3, requires_grad=True)
    class_agnostic_edge_aware_loss(logits, target, 1, IGNORE).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_cea_rejects_a_class_outside_the_model():
    with pytest.raises(InvalidInputError, match="outside"):
        class_agnostic_edge_aware_loss(two_class_logits([0.5, 0.5]), torch.tensor([[[0, 1]]]), 2, IGNORE)


def test_pick_present_class_draws_only_present_classes_reproducibly():
    target = torch.tensor([[[0, 3, IGNORE], [3, 5, 5]]])
    draws = [pick_present_class(target, IGNORE, torch.Generator().manual_seed(s)) for s in range(40)]
    assert set(draws) == {0, 3, 5}
    assert pick_present_class(target, IGNORE, torch.Generator().manual_seed(7)) == draws[7]
    assert pick_present_class(torch.full((1, 2, 2), IGNORE), IGNORE) is None


def test_cea_module_draws_with_its_seed():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6)
    target = torch.randint(0, 4, (2, 6, 6))
    a = ClassAgnosticEdgeAwareLoss(IGNORE, seed=3)
    b = ClassAgnosticEdgeAwareLoss(IGNORE, seed=3)
    assert [a(logits, target).item() for _ in range(3)] == [b(logits, target).item() for _ in range(3)]


# Lossd row: GT 1 1 1 1 0 0 0 0, prediction 1 1 0 0 0 0 1 0.
LOSSD_TARGET = torch.tensor([[[1, 1, 1, 1, 0, 0, 0, 0]]])
LOSSD_P1 = [0.9, 0.8, 0.3, 0.2, 0.1, 0.4, 0.6, 0.3]


def test_lossd_row_hand_value():
    # class 1: FN at x=2 (d_in 2), x=3 (d_in 1), FP at x=6 (d_out 3); class 0 mirrors them: FP 2, 1 and FN 3.
    per_class = (math.log(3) + math.log(2) + math.log(4)) / math.log(51) / 8
    loss = distance_loss(two_class_logits(LOSSD_P1), LOSSD_TARGET, IGNORE, max_distance_px=50)
    assert loss.item() == pytest.approx((per_class + per_class) / 2, rel=1e-12)


def test_lossd_gradient_is_zero_on_correct_pixels_and_matches_hand_value_on_wrong_ones():
    logits = two_class_logits(LOSSD_P1).requires_grad_(True)
    distance_loss(logits, LOSSD_TARGET, IGNORE).backward()
    assert logits.grad is not None
    grad = logits.grad[0, 1, 0]
    assert grad[[0, 1, 4, 5, 7]].abs().max().item() == 0.0
    assert torch.all(grad[[2, 3, 6]].abs() > 0)
    # x=6: dL/dm1 = +3/(64 ln 51) (FP, d_out 3), dL/dm0 = -3/(64 ln 51) (FN, d_in 3); softmax gives
    # dL/dz1 = p0 p1 (dL/dm1 - dL/dm0) with p1 = 0.6.
    assert grad[6].item() == pytest.approx(0.4 * 0.6 * 6 / (64 * math.log(51)), rel=1e-9)
    # Misses at depth d weigh d/(1+d): x=3 (d=1, p1=0.2) -> -2*(1/2)*p0p1/(16 ln 51); x=2 (d=2, p1=0.3) ->
    # -2*(2/3)*p0p1/(16 ln 51).
    assert grad[3].item() == pytest.approx(-2 * (1 / 2) * 0.8 * 0.2 / (16 * math.log(51)), rel=1e-9)
    assert grad[2].item() == pytest.approx(-2 * (2 / 3) * 0.7 * 0.3 / (16 * math.log(51)), rel=1e-9)


def test_lossd_is_exactly_zero_for_a_correct_prediction_even_when_unconfident():
    logits = two_class_logits([0.6, 0.51, 0.7, 0.9, 0.4, 0.2, 0.45, 0.1]).requires_grad_(True)
    loss = distance_loss(logits, LOSSD_TARGET, IGNORE)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None
    assert logits.grad.abs().max().item() == 0.0


def test_lossd_treats_ignored_pixels_as_outside_and_leaves_them_out_of_the_mean():
    # GT 1 1 _ 1 1 1 with an ignored 3rd pixel; the prediction is all class 0.
    # class 1: every valid pixel is a miss, d_in = [2, 1, -, 1, 2, 3]; class 0 has no GT pixel, so every valid
    # pixel is a spill with the capped distance 50 -> normalised 1.
    target = torch.tensor([[[1, 1, IGNORE, 1, 1, 1]]])
    p1 = [0.1, 0.2, 0.3, 0.2, 0.1, 0.4]
    class1 = sum(math.log1p(d) for d in (2, 1, 1, 2, 3)) / math.log(51) / 5
    expected = (class1 + 1.0) / 2
    assert distance_loss(two_class_logits(p1), target, IGNORE).item() == pytest.approx(expected, rel=1e-12)
    p1_changed = [0.1, 0.2, 0.99, 0.2, 0.1, 0.4]
    assert distance_loss(two_class_logits(p1_changed), target, IGNORE).item() == pytest.approx(expected, rel=1e-12)


def test_lossd_class_weights_and_downsampling():
    logits = two_class_logits(LOSSD_P1)
    per_class = (math.log(3) + math.log(2) + math.log(4)) / math.log(51) / 8
    weighted = distance_loss(logits, LOSSD_TARGET, IGNORE, class_weights=(0.0, 2.0))
    assert weighted.item() == pytest.approx(2.0 * per_class / 2, rel=1e-12)
    # Every 2nd pixel: GT 1 1 0 0, prediction 1 0 0 1 -> class 1: FN d_in 1, FP d_out 2; class 0 mirrors.
    half = distance_loss(logits, LOSSD_TARGET, IGNORE, downsample=2)
    assert half.item() == pytest.approx((math.log(2) + math.log(3)) / math.log(51) / 4, rel=1e-12)
    with pytest.raises(InvalidInputError, match="class weights"):
        distance_loss(logits, LOSSD_TARGET, IGNORE, class_weights=(1.0,))


def test_lossd_of_an_all_ignored_batch_is_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = distance_loss(logits, torch.full((1, 2, 2), IGNORE), IGNORE)
    assert loss.item() == 0.0
    loss.backward()


def test_straight_through_mask_is_exactly_one_hot_with_identity_gradient():
    probs = torch.softmax(torch.randn(2, 4, 3, 3, dtype=torch.float64), dim=1).requires_grad_(True)
    mask = straight_through_mask(probs)
    assert set(mask.detach().unique().tolist()) == {0.0, 1.0}
    assert torch.all(mask.detach().sum(dim=1) == 1)
    (mask * torch.arange(4.0, dtype=torch.float64).view(1, 4, 1, 1)).sum().backward()
    assert probs.grad is not None
    assert torch.all(probs.grad == torch.arange(4.0, dtype=torch.float64).view(1, 4, 1, 1))

"""Fisher discriminant loss and heatmap supervision against hand-computed values."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from engine.errors import InvalidInputError
from training.losses import FisherDiscriminantLoss, fisher_discriminant_loss, heatmap_supervision_losses

IGNORE = 255


def test_fisher_two_images_two_classes_hand_value():
    # centres 1 and 3; within = mean of four squared deviations of 1 = 1; between = (1 - 3)^2 = 4.
    embeddings = torch.tensor([[[0.0], [2.0]], [[2.0], [4.0]]])
    assert fisher_discriminant_loss(embeddings).item() == pytest.approx(1 / (4 + 1e-6), rel=1e-6)


def test_fisher_averages_between_scatter_over_class_pairs():
    # centres (0,0), (2,1), (0,3): within = 4 / 6; pair distances 5, 9, 8 -> between 22 / 3.
    embeddings = torch.tensor(
        [[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], [[0.0, 0.0], [2.0, 2.0], [0.0, 4.0]]], dtype=torch.float64
    )
    expected = (4 / 6) / (22 / 3 + 1e-6)
    assert fisher_discriminant_loss(embeddings).item() == pytest.approx(expected, rel=1e-12)


def test_fisher_clamps_between_scatter_when_class_centres_coincide():
    embeddings = torch.tensor([[[1.0], [1.0]], [[3.0], [3.0]]], dtype=torch.float64)
    assert fisher_discriminant_loss(embeddings).item() == pytest.approx(1.0 / (1e-4 + 1e-6), rel=1e-9)


def test_fisher_function_rejects_a_single_image_and_the_module_returns_zero_with_one_warning(caplog):
    embeddings = torch.randn(1, 3, 4, requires_grad=True)
    with pytest.raises(InvalidInputError, match="batch size >= 2"):
        fisher_discriminant_loss(embeddings)
    module = FisherDiscriminantLoss()
    with caplog.at_level(logging.WARNING, logger="training.losses.bicorseg"):
        first = module(embeddings)
        second = module(embeddings)
    assert first.item() == 0.0 and second.item() == 0.0
    assert sum("Fisher loss skipped" in r.getMessage() for r in caplog.records) == 1
    first.backward()


def test_fisher_is_differentiable_and_shrinks_when_images_agree():
    torch.manual_seed(0)
    embeddings = torch.randn(4, 5, 8, requires_grad=True)
    loss = fisher_discriminant_loss(embeddings)
    loss.backward()
    assert embeddings.grad is not None
    assert torch.isfinite(embeddings.grad).all()
    centred = embeddings.detach().mean(dim=0, keepdim=True) + 0.1 * (embeddings.detach() - embeddings.detach().mean(0))
    assert fisher_discriminant_loss(centred).item() == pytest.approx(0.01 * loss.item(), rel=1e-4)


def test_heatmap_supervision_of_constant_heatmaps_hand_value():
    # Constant logits stay constant after bilinear upsampling -> p = 1/2 everywhere.
    # Labels 4x4: rows 0-1 class 0 (8 px), rows 2-3 class 1 with one ignored pixel (7 px); 15 valid of 16.
    target = torch.tensor([[[0] * 4, [0] * 4, [1] * 4, [1, 1, 1, IGNORE]]])
    soft_ce = math.log(2) * 15 / 16  # every valid pixel: (1-eps) ln 2 + eps ln 2; mean over all 16 pixels
    dice0 = 1 - (2 * 8 / 2 + 0.05) / (15 / 2 + 8 + 0.05)
    dice1 = 1 - (2 * 7 / 2 + 0.05) / (15 / 2 + 7 + 0.05)
    expected = soft_ce + (dice0 + dice1) / 2
    heatmaps = (torch.zeros(1, 2, 1, 1, dtype=torch.float64), torch.full((1, 2, 2, 2), 3.0, dtype=torch.float64))
    losses = heatmap_supervision_losses(heatmaps, target, IGNORE)
    assert [v.item() for v in losses] == pytest.approx([expected, expected], rel=1e-12)


def test_heatmap_supervision_upsamples_bilinearly_to_label_size():
    # A 1x2 heatmap [a, b] of class-1 logits (class 0 at 0) upsampled to 1x4 with half-pixel centres is
    # [a, 0.75a + 0.25b, 0.25a + 0.75b, b]; with a = 0 and b = 4: class-1 logits [0, 1, 3, 4].
    heatmap = torch.tensor([[[[0.0, 0.0]], [[0.0, 4.0]]]], dtype=torch.float64)
    target = torch.tensor([[[1, 1, 1, 1]]])
    p1 = [1 / (1 + math.exp(-z)) for z in (0.0, 1.0, 3.0, 4.0)]
    soft_ce = sum(-(0.95 + 0.025) * math.log(p) - 0.025 * math.log(1 - p) for p in p1) / 4
    dice = 1 - (2 * sum(p1) + 0.05) / (sum(p1) + 4 + 0.05)  # class 0 absent -> 0, counted in the mean of 2
    (loss,) = heatmap_supervision_losses((heatmap,), target, IGNORE)
    assert loss.item() == pytest.approx(soft_ce + dice / 2, rel=1e-12)

"""The two models' total training losses and :func:`build_loss`, which picks one by model name."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from engine.errors import InvalidInputError
from engine.models.outputs import SegmentationOutput

from .bicorseg import FisherDiscriminantLoss, heatmap_supervision_losses, soft_ce_dice_loss
from .cea import class_agnostic_edge_aware_loss, pick_present_class
from .config import LossConfig, resolve_model_family
from .cross_entropy import MeanOver, label_smoothed_cross_entropy
from .dice import generalized_dice_loss
from .lossd import distance_loss


class SegmentationLoss(Protocol):
    """A total training loss: model output and (B, H, W) labels in, (total, named unweighted parts) out."""

    def __call__(self, output: SegmentationOutput, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Total loss (scalar, differentiable) and a dict of float parts for logging (always has "total")."""
        ...


def _check_logits(name: str, logits: Tensor, mask: Tensor, num_classes: int) -> None:
    if logits.dim() != 4 or logits.shape[1] != num_classes or logits.shape[-2:] != mask.shape[-2:]:
        raise InvalidInputError(
            f"{name} logits have shape {tuple(logits.shape)} for labels {tuple(mask.shape)} and {num_classes} "
            "classes; the model must return (B, K, H, W) logits at label resolution."
        )


def _layer_weights(name: str, weights: tuple[float, ...] | None, layers: int) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * layers
    if len(weights) != layers:
        raise InvalidInputError(
            f"{name} has {len(weights)} entries but the model has {layers} layers; give one per layer or None."
        )
    return weights


class ReferenceLoss:
    """The reference U-Net recipe's loss: cross-entropy with label smoothing (0.1, spread over all classes).

    Args:
        cfg: Weights and options (``label_smoothing`` and ``ignore_index`` are used).
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg
        self.smoothing = cfg.smoothing_for("reference")
        self.spread = cfg.spread_for("reference")

    def __call__(self, output: SegmentationOutput, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Total loss and its parts (one: ``ce``)."""
        ce = label_smoothed_cross_entropy(output.logits, mask, self.smoothing, self.cfg.ignore_index, "valid",
                                          self.spread)  # fmt: skip
        return ce, {"ce": ce.item()}


class HiResNetLoss:
    """Hi-ResNet's loss (paper eqs. 8-9), optionally plus Lossd.

        L_head = w_GD·GD + w_LSCE·LSCE + w_CEA·CEA      (paper: 0.3923, 0.3923, 0.2153)
        L = w_coarse·L_head(coarse) + w_refined·L_head(refined) [+ λ_d·Lossd(refined) [+ λ_d·Lossd(coarse)]]

    In training mode the output's ``logits`` are the refined head and ``aux_logits`` the coarse head; CEA uses
    one class per call, drawn among the classes present in the labels and shared by both heads. When
    ``aux_logits`` is None (eval mode) only ``logits`` is scored, as the refined head.

    Args:
        cfg: Weights and options.
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg
        self.smoothing = cfg.smoothing_for("hi_resnet")
        self.spread = cfg.spread_for("hi_resnet")
        self.generator = None if cfg.cea_seed is None else torch.Generator().manual_seed(cfg.cea_seed)

    def _head(self, name: str, logits: Tensor, mask: Tensor, cea_class: int | None) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        gd = generalized_dice_loss(logits, mask, cfg.ignore_index)
        lsce = label_smoothed_cross_entropy(logits, mask, self.smoothing, cfg.ignore_index, "valid", self.spread)
        if cea_class is None:
            cea = logits.sum() * 0.0
        else:
            cea = class_agnostic_edge_aware_loss(
                logits, mask, cea_class, cfg.ignore_index, cfg.cea_max_distance_px, cfg.cea_exponent
            )
        w_gd, w_lsce, w_cea = cfg.head_weights
        head = w_gd * gd + w_lsce * lsce + w_cea * cea
        parts = {f"{name}_gd": gd.item(), f"{name}_lsce": lsce.item(), f"{name}_cea": cea.item()}
        parts[f"{name}_head"] = head.item()
        return head, parts

    def _lossd(self, logits: Tensor, mask: Tensor) -> Tensor:
        cfg = self.cfg
        return distance_loss(
            logits,
            mask,
            cfg.ignore_index,
            cfg.lossd_max_iter,
            cfg.lossd_class_weights,
            downsample=cfg.lossd_downsample,
        )

    def __call__(self, output: SegmentationOutput, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Total loss and parts ``{refined,coarse}_{gd,lsce,cea,head}``, ``lossd[_coarse]`` and ``total``."""
        cfg = self.cfg
        heads = [("refined", output.logits, cfg.refined_weight)]
        if output.aux_logits is not None:
            heads.append(("coarse", output.aux_logits, cfg.coarse_weight))
        cea_class = pick_present_class(mask, cfg.ignore_index, self.generator)
        total = output.logits.new_zeros(())
        parts: dict[str, float] = {}
        for name, logits, weight in heads:
            _check_logits(name, logits, mask, cfg.num_classes)
            head, head_parts = self._head(name, logits, mask, cea_class)
            total = total + weight * head
            parts.update(head_parts)
        if cfg.lossd_weight > 0:
            lossd = self._lossd(output.logits, mask)
            total = total + cfg.lossd_weight * lossd
            parts["lossd"] = lossd.item()
            if cfg.lossd_on_coarse and output.aux_logits is not None:
                lossd_coarse = self._lossd(output.aux_logits, mask)
                total = total + cfg.lossd_weight * lossd_coarse
                parts["lossd_coarse"] = lossd_coarse.item()
        parts["total"] = total.item()
        return total, parts


class BiCoRSegLoss:
    """BiCoR-Seg's loss as in its code (spec 5.5), optionally plus Lossd on the main logits.

        L = [SoftCE + Dice](seg) + w_aux·SoftCE(aux) + λ_HM·Σ_l β_l·[SoftCE + Dice](up(H_l))
            + λ_FD·Σ_l α_l·FD_l + [has_fisher_loss] w_last·FD_L [+ λ_d·Lossd(seg)]

    Terms whose inputs the output lacks (``aux_logits``, ``heatmaps``, ``class_embeddings`` in eval mode) are
    left out. Under ``torchrun`` the Fisher terms use the images of all processes (the global batch); they are 0
    (with one logged warning) when that batch holds one image.

    Args:
        cfg: Weights and options.
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg
        self.smoothing = cfg.smoothing_for("bicorseg")
        self.fisher = FisherDiscriminantLoss()

    def _heatmaps(self, heatmaps: tuple[Tensor, ...], mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        betas = _layer_weights("heatmap_betas", cfg.heatmap_betas, len(heatmaps))
        layers = heatmap_supervision_losses(
            heatmaps, mask, cfg.ignore_index, self.smoothing, cfg.geoseg_compat, cfg.dice_smooth, cfg.dice_eps
        )
        weighted = torch.stack([beta * layer for beta, layer in zip(betas, layers, strict=True)]).sum()
        parts = {f"heatmap_l{i + 1}": layer.item() for i, layer in enumerate(layers)}
        parts["heatmap"] = weighted.item()
        return weighted, parts

    def _fisher(self, embeddings: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        alphas = _layer_weights("fisher_alphas", cfg.fisher_alphas, len(embeddings))
        layers = [self.fisher(layer) for layer in embeddings]
        total = cfg.fisher_weight * torch.stack([a * fd for a, fd in zip(alphas, layers, strict=True)]).sum()
        if cfg.has_fisher_loss:
            total = total + cfg.last_fisher_weight * layers[-1]
        return total, {f"fisher_l{i + 1}": fd.item() for i, fd in enumerate(layers)}

    def __call__(self, output: SegmentationOutput, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Total loss and parts ``seg_ce``, ``seg_dice``, ``aux_ce``, ``heatmap[_lN]``, ``fisher_lN``, ``lossd``."""
        cfg = self.cfg
        _check_logits("seg", output.logits, mask, cfg.num_classes)
        seg_ce, seg_dice = soft_ce_dice_loss(
            output.logits, mask, cfg.ignore_index, self.smoothing, cfg.geoseg_compat, cfg.dice_smooth, cfg.dice_eps
        )
        total = seg_ce + seg_dice
        parts = {"seg_ce": seg_ce.item(), "seg_dice": seg_dice.item()}
        if output.aux_logits is not None:
            _check_logits("aux", output.aux_logits, mask, cfg.num_classes)
            mean_over: MeanOver = "all" if cfg.geoseg_compat else "valid"
            aux_ce = label_smoothed_cross_entropy(output.aux_logits, mask, self.smoothing, cfg.ignore_index, mean_over)
            total = total + cfg.aux_weight * aux_ce
            parts["aux_ce"] = aux_ce.item()
        if output.heatmaps:
            heatmap, heatmap_parts = self._heatmaps(output.heatmaps, mask)
            total = total + cfg.heatmap_weight * heatmap
            parts.update(heatmap_parts)
        if output.class_embeddings:
            fisher, fisher_parts = self._fisher(output.class_embeddings)
            total = total + fisher
            parts.update(fisher_parts)
        if cfg.lossd_weight > 0:
            lossd = distance_loss(
                output.logits,
                mask,
                cfg.ignore_index,
                cfg.lossd_max_iter,
                cfg.lossd_class_weights,
                downsample=cfg.lossd_downsample,
            )
            total = total + cfg.lossd_weight * lossd
            parts["lossd"] = lossd.item()
        parts["total"] = total.item()
        return total, parts


def build_loss(model_family: str, cfg: LossConfig) -> SegmentationLoss:
    """The total training loss of a model family or variant name.

    Args:
        model_family: "hi_resnet" or "bicorseg", or a variant such as "hi_resnet_small",
            "bicorseg_small" (mapped by prefix; "bicorseg_hi_resnet" is BiCoR-Seg).
        cfg: Weights and options.

    Returns:
        A callable ``(output: SegmentationOutput, mask: (B, H, W) int64) -> (total, parts)``.

    Raises:
        InvalidInputError: If the name belongs to neither family.
    """
    family = resolve_model_family(model_family)
    if family == "bicorseg":
        return BiCoRSegLoss(cfg)
    if family == "reference":
        return ReferenceLoss(cfg)
    return HiResNetLoss(cfg)

"""HBIS: the Heatmap-driven Bidirectional Information Synergy layer of BiCoR-Seg.

Paper: Jinghao Shi et al., "BiCoR-Seg: Bidirectional Co-Refinement Framework for High-Resolution Remote Sensing
Image Segmentation", Computational Visual Media 2026 (arXiv:2512.20255).

Clean-room note: implemented from the project's written spec (``models-spec.md`` section 3.2), not from the
authors' repository, which has no licence. Each layer lets class embeddings CE (B, N, E) and a feature map
F (B, E, h, w) refine each other through a class heatmap:

1. heatmap logits S = <LN(CE) W_q, LN(F)> / sqrt(E) / tau (the low-resolution prediction that is supervised);
2. F2CE: class context from the top-k pixels of sigmoid(S) (weights computed without gradient), then a gated
   update of CE;
3. CE2F: per-class FiLM of F by the updated CE, mixed by softmax(S) over classes, in the factorised form
   F * (sum_n H_n gamma_n) + sum_n H_n beta_n, which never builds the (B, N, E, h, w) tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from .layers import LayerNorm2d

__all__ = ["HBISLayer", "film_mix", "topk_pixel_weights"]


def topk_pixel_weights(heat: Tensor, topk_ratio: float, min_pixels: int = 64, eps: float = 1e-6) -> Tensor:
    """Per-class pixel weights from a sigmoid heatmap: keep the top-k pixels, renormalise to sum 1.

    k = min(P, max(min_pixels, round(topk_ratio * P))) for P = h * w pixels. When the kept mass is about zero the
    whole heatmap normalised over all pixels is used instead, and when even that is about zero, uniform weights,
    so every class always gets weights summing to 1. Computed without gradient (the heatmap learns through the
    CE2F path and the heatmap loss only).

    Args:
        heat: Sigmoid heatmap (B, N, P), values in [0, 1].
        topk_ratio: Fraction of pixels kept per class; >= 1 keeps all.
        min_pixels: Lower bound on k.
        eps: Mass below which a fallback is used.

    Returns:
        Weights (B, N, P), non-negative, summing to 1 over P, detached.
    """
    with torch.no_grad():
        if topk_ratio >= 1.0:
            kept = heat
        elif torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]
            kept = _topk_by_threshold(heat, topk_ratio, min_pixels)
        else:
            num_pixels = heat.shape[-1]
            k = min(num_pixels, max(min_pixels, round(topk_ratio * num_pixels)))
            values, index = heat.topk(k, dim=-1)
            kept = torch.zeros_like(heat).scatter(-1, index, values)
        kept_mass = kept.sum(dim=-1, keepdim=True)
        all_mass = heat.sum(dim=-1, keepdim=True)
        ones = torch.ones_like(heat)
        uniform = ones / ones.sum(dim=-1, keepdim=True)  # 1 / P without baking P into an exported graph
        fallback = torch.where(all_mass > eps, heat / all_mass.clamp_min(eps), uniform)
        weights = torch.where(kept_mass > eps, kept / kept_mass.clamp_min(eps), fallback)
    return weights.detach()


def _topk_by_threshold(heat: Tensor, topk_ratio: float, min_pixels: int) -> Tensor:
    """Top-k selection with k computed from the traced shape, for ONNX export at any tile size.

    The eager path's ``topk(k)`` needs a Python int, which tracing would freeze at the export size. Here k is a
    tensor and the pixels at or above the k-th largest value are kept: identical to top-k unless several pixels tie
    with the k-th value (then all of them are kept).
    """
    num_pixels = torch._shape_as_tensor(heat)[-1].to(heat.dtype)
    k = torch.clamp(torch.round(num_pixels * topk_ratio), min=float(min_pixels))
    k = torch.minimum(k, num_pixels).to(torch.int64)
    ordered = torch.sort(heat, dim=-1, descending=True).values
    kth = ordered.index_select(-1, (k - 1).reshape(1))  # (B, N, 1): the k-th largest value per class
    return torch.where(heat >= kth, heat, torch.zeros_like(heat))


def film_mix(feat: Tensor, heat_soft: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """Heatmap-weighted per-class FiLM: sum_n H_n(p) (gamma_n * F(p) + beta_n), factorised.

    Since sum_n H_n (gamma_n F + beta_n) = F * (sum_n H_n gamma_n) + sum_n H_n beta_n, only two (B, E, h, w)
    maps are formed instead of a (B, N, E, h, w) tensor.

    Args:
        feat: F (B, E, h, w).
        heat_soft: Class mixing weights H (B, N, h, w).
        gamma: Per-class scales (B, N, E).
        beta: Per-class shifts (B, N, E).

    Returns:
        The modulated map (B, E, h, w).
    """
    mixed_gamma = torch.einsum("bnhw,bne->behw", heat_soft, gamma)
    mixed_beta = torch.einsum("bnhw,bne->behw", heat_soft, beta)
    return feat * mixed_gamma + mixed_beta


class HBISLayer(nn.Module):
    """One HBIS layer (C_f = C_d = E, one inner step).

    Args:
        embed_dim: E, the width of both the class embeddings and the feature map.
        topk_ratio: Fraction of pixels per class used for the class context (0.02 on LoveDA, 1.0 on ISPRS).
        min_pixels: Lower bound on the number of kept pixels.
        tau: Temperature of the heatmap logits.
        film_lambda: Blend of the FiLM-modulated map into F: F <- (1 - lambda) F + lambda F_new.

    Shapes:
        forward(ce (B, N, E), feat (B, E, h, w)) -> (ce' (B, N, E), feat' (B, E, h, w), logits (B, N, h, w)).
    """

    def __init__(
        self,
        embed_dim: int,
        topk_ratio: float = 0.02,
        min_pixels: int = 64,
        tau: float = 1.0,
        film_lambda: float = 0.5,
    ) -> None:
        super().__init__()
        if not topk_ratio > 0.0:
            raise InvalidInputError(f"topk_ratio must be > 0 (got {topk_ratio}); use 1.0 to weight all pixels.")
        if not tau > 0.0:
            raise InvalidInputError(f"tau must be > 0 (got {tau}); the paper uses 1.0.")
        if not 0.0 <= film_lambda <= 1.0:
            raise InvalidInputError(f"film_lambda must be in [0, 1] (got {film_lambda}); the paper uses 0.5.")
        if min_pixels < 1:
            raise InvalidInputError(f"min_pixels must be >= 1 (got {min_pixels}); the paper uses 64.")
        e = embed_dim
        self.embed_dim = e
        self.topk_ratio = float(topk_ratio)
        self.min_pixels = int(min_pixels)
        self.tau = float(tau)
        self.film_lambda = float(film_lambda)
        self.norm_embed = nn.LayerNorm(e)
        self.norm_feat = LayerNorm2d(e, eps=1e-5)
        self.query = nn.Linear(e, e, bias=False)
        self.value = nn.Conv2d(e, e, kernel_size=1, bias=False)
        self.gate = nn.Sequential(nn.Linear(2 * e, e), nn.GELU(), nn.Linear(e, e))
        self.candidate = nn.Sequential(nn.Linear(e, e), nn.GELU(), nn.Linear(e, e))
        self.film_gamma = nn.Linear(e, e)
        self.film_beta = nn.Linear(e, e)

    def heatmap_scores(self, ce_norm: Tensor, feat_norm: Tensor) -> Tensor:
        """Raw scores <Q_n, F_hat(p)> / sqrt(E), before the temperature: (B, N, h, w)."""
        query = self.query(ce_norm)
        return torch.einsum("bne,behw->bnhw", query, feat_norm) / math.sqrt(self.embed_dim)

    def forward(self, ce: Tensor, feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Refine class embeddings and features once; see the class docstring for shapes."""
        ce_norm = self.norm_embed(ce)
        feat_norm = self.norm_feat(feat)
        scores = self.heatmap_scores(ce_norm, feat_norm)
        logits = scores / self.tau
        heat_sig = torch.sigmoid(scores)  # the spec's sigmoid view uses the score before the temperature
        heat_soft = torch.softmax(logits, dim=1)

        # F2CE: context of each class from its most confident pixels, then a gated update of the raw CE.
        weights = topk_pixel_weights(heat_sig.flatten(2), self.topk_ratio, self.min_pixels)
        values = self.value(feat_norm).flatten(2)  # (B, E, P)
        context = torch.einsum("bnp,bep->bne", weights, values)
        gate = torch.sigmoid(self.gate(torch.cat([ce_norm, context], dim=-1)))
        ce = gate * self.candidate(context) + (1.0 - gate) * ce

        # CE2F: FiLM of the raw F by the updated CE, mixed over classes by the softmax heatmap.
        gamma = 1.0 + torch.tanh(self.film_gamma(ce))
        beta = self.film_beta(ce)
        feat_new = film_mix(feat, heat_soft, gamma, beta)
        feat = (1.0 - self.film_lambda) * feat + self.film_lambda * feat_new
        return ce, feat, logits

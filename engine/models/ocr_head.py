"""Hi-ResNet's two segmentation heads: the coarse head and the ASP-OCR refined head.

The refined head follows object-contextual representations (OCR; Yuan, Chen and Wang, ECCV 2020) with atrous
spatial-pyramid branches (Chen et al., DeepLab), as used by Hi-ResNet (Chen et al., IEEE JSTARS 17, 2024,
arXiv:2305.12691). Clean-room implementation from the team's spec (``models-spec.md`` section 2.5); no code was
taken from the authors' repository.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import ConvBnAct

__all__ = ["AspOcrHead", "CoarseHead", "ObjectAttention"]


class CoarseHead(nn.Module):
    """3x3 conv (bias) -> BN -> GELU -> 1x1 conv to K logits (no bias).

    Args:
        in_channels: Channels of the concatenated multi-branch features.
        mid_channels: Hidden width.
        num_classes: K.
    """

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = ConvBnAct(in_channels, mid_channels, 3, bias=True)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, h, w) -> coarse logits (B, K, h, w)."""
        logits: Tensor = self.classifier(self.features(x))
        return logits


def _projection(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    """``depth`` stacked [1x1 conv -> BN -> GELU] layers, the first changing the width."""
    layers = [ConvBnAct(in_channels if i == 0 else out_channels, out_channels, 1) for i in range(depth)]
    return nn.Sequential(*layers)


class ObjectAttention(nn.Module):
    """OCR object attention: every pixel attends over the K class proxies and gathers their context.

    Args:
        channels: Width of the pixel features and the proxies.
        key_channels: Width of queries, keys and values.
    """

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.query = _projection(channels, key_channels, 2)
        self.key = _projection(channels, key_channels, 2)
        self.value = _projection(channels, key_channels, 1)
        self.out = ConvBnAct(key_channels, channels, 1)
        self.scale = 1.0 / math.sqrt(key_channels)

    def forward(self, pixels: Tensor, proxies: Tensor) -> Tensor:
        """Pixels (B, C, h, w) and proxies (B, C, K, 1) -> context (B, C, h, w)."""
        b, _, h, w = pixels.shape
        query = self.query(pixels).flatten(2).transpose(1, 2)  # (B, hw, Ck)
        key = self.key(proxies).flatten(2)  # (B, Ck, K)
        value = self.value(proxies).flatten(2).transpose(1, 2)  # (B, K, Ck)
        attention = torch.softmax((query @ key) * self.scale, dim=-1)  # (B, hw, K): softmax over classes
        context = (attention @ value).transpose(1, 2).reshape(b, -1, h, w)
        out: Tensor = self.out(context)
        return out


class AspOcrHead(nn.Module):
    """ASP-OCR refined head: OCR context plus four atrous branches, concatenated and fused to ``channels``.

    1. Context: f = GELU(BN(3x3 conv(X))); class proxies r_k = sum_p softmax_p(A_k) f_p from the coarse logits A;
       object attention of every pixel over the proxies. The context replaces f (no concatenation with f).
    2. Four branches on X: 1x1 conv and three dilated 3x3 convs (dilations 24/48/72 in the paper config).
    3. Concatenate the five maps -> 1x1 conv -> BN -> GELU -> Dropout2d.

    Args:
        in_channels: Channels of X.
        channels: Width of every branch and of the output.
        key_channels: Width of the object attention.
        dilations: Dilation of each 3x3 atrous branch.
        dropout: Dropout2d probability at the end.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        key_channels: int,
        dilations: Sequence[int] = (24, 48, 72),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.context_features = ConvBnAct(in_channels, channels, 3, bias=True)
        self.object_attention = ObjectAttention(channels, key_channels)
        self.branches = nn.ModuleList(
            [ConvBnAct(in_channels, channels, 1, bias=True)]
            + [ConvBnAct(in_channels, channels, 3, dilation=d, bias=True) for d in dilations]
        )
        self.fuse = nn.Sequential(
            ConvBnAct(channels * (len(dilations) + 2), channels, 1, bias=True),
            nn.Dropout2d(dropout),
        )

    def forward(self, x: Tensor, coarse_logits: Tensor) -> Tensor:
        """Features X (B, in, h, w) and coarse logits (B, K, h, w) -> refined features (B, channels, h, w)."""
        feats = self.context_features(x)
        b, c, _, _ = feats.shape
        # Soft object regions: each class's logits, softmaxed over all pixels, weight the pixel features.
        regions = torch.softmax(coarse_logits.flatten(2), dim=2)  # (B, K, hw)
        proxies = (regions @ feats.flatten(2).transpose(1, 2)).transpose(1, 2)  # (B, C, K)
        context = self.object_attention(feats, proxies.reshape(b, c, -1, 1))
        outputs = [context] + [branch(x) for branch in self.branches]
        fused: Tensor = self.fuse(torch.cat(outputs, dim=1))
        return fused

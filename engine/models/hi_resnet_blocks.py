"""Hi-ResNet building blocks: funnel IB block, IA block, conv + coordinate-attention block, multi-branch module.

From: Chen, Yuxia, et al. "Hi-ResNet: Edge Detail Enhancement for High-Resolution Remote Sensing
Segmentation." IEEE JSTARS 17 (2024): 15024-15040, arXiv:2305.12691.

Clean-room implementation written from the team's spec (``models-spec.md`` section 2) and the paper text; no
code was taken from the authors' repository (it has no licence). The IA block's internal order is not published:
the reconstruction below (SE -> window MHSA with skip -> DW7-BN-GELU-PW with skip) is the spec's decision H3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import CoordinateAttention, DropPath, SqueezeExcite, WindowAttention

__all__ = ["BlockFactory", "CoordAttentionBlock", "FunnelBlock", "InfoAggregationBlock", "MultiBranchModule"]


class FunnelBlock(nn.Module):
    """Inverted bottleneck (IB) block of the funnel: thin ends, a 4x wider middle, linear output.

    3x3 conv -> BN -> 1x1 conv (x expansion) -> GELU -> 1x1 conv back -> layer scale -> drop path -> + shortcut.
    There is no activation after the addition (the paper's "linear activation" to avoid information loss).

    Args:
        in_channels: Input channels; when they differ from ``out_channels`` the shortcut is BN -> 1x1 conv.
        out_channels: Output channels.
        expansion: Width multiplier of the middle.
        drop_path: Stochastic-depth rate of the residual branch.
        layer_scale_init: Initial value of the per-channel residual scale (small, so blocks start near identity).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion: int = 4,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        hidden = expansion * out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.expand = nn.Conv2d(out_channels, hidden, 1, bias=False)
        self.act = nn.GELU()
        self.reduce = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.full((out_channels,), layer_scale_init))
        self.drop_path = DropPath(drop_path)
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, out_channels, 1, bias=False))
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, H, W) -> (B, out, H, W)."""
        y = self.reduce(self.act(self.expand(self.norm(self.conv(x)))))
        out: Tensor = self.shortcut(x) + self.drop_path(y * self.gamma[:, None, None])
        return out


class InfoAggregationBlock(nn.Module):
    """Information aggregation (IA) block: SE -> window MHSA (skip) -> large-kernel depthwise conv + 1x1 (skip).

    Reconstruction of the paper's block (spec 2.3, decisions H2/H3): Swin-style non-shifted L x L windows with
    tokens = positions and token dim = C, head dim 16; then DW k x k -> BN -> GELU -> 1x1 conv. No activation after
    the last addition.

    Args:
        channels: C.
        window_px: Attention window edge L (the map is padded to a multiple of L inside the attention).
        head_dim: Channels per attention head (heads = C / head_dim).
        se_reduction: SE hidden width is C / se_reduction.
        dw_kernel: Depthwise kernel size k.
        drop_path: Stochastic-depth rate of both residual branches.
    """

    def __init__(
        self,
        channels: int,
        window_px: int = 8,
        head_dim: int = 16,
        se_reduction: int = 4,
        dw_kernel: int = 7,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if channels % head_dim != 0:
            raise ValueError(f"IA block channels={channels} must be a multiple of head_dim={head_dim}.")
        self.se = SqueezeExcite(channels, se_reduction)
        self.attn_norm = nn.BatchNorm2d(channels)
        self.attn = WindowAttention(channels, channels // head_dim, window_px)
        self.dw = nn.Conv2d(channels, channels, dw_kernel, padding=dw_kernel // 2, groups=channels, bias=False)
        self.dw_norm = nn.BatchNorm2d(channels)
        self.act = nn.GELU()
        self.pw = nn.Conv2d(channels, channels, 1, bias=True)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y: Tensor = x + self.drop_path(self.attn(self.attn_norm(self.se(x))))
        out: Tensor = y + self.drop_path(self.pw(self.act(self.dw_norm(self.dw(y)))))
        return out


class CoordAttentionBlock(nn.Module):
    """The authors' public-code branch block ("Hi-ResNet-CA", spec 2.3): conv -> BN -> CA -> conv, plus identity.

    3x3 conv -> BN -> coordinate attention -> 3x3 conv -> drop path -> + input; no final activation.

    Args:
        channels: C.
        drop_path: Stochastic-depth rate of the residual branch.
    """

    def __init__(self, channels: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.coord = CoordinateAttention(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        out: Tensor = x + self.drop_path(self.conv2(self.coord(self.norm(self.conv1(x)))))
        return out


class BlockFactory:
    """Picklable callable building one branch block of a given width (keeps the module tree free of lambdas)."""

    def __init__(self, kind: str, drop_path: float, **ia_options: int) -> None:
        if kind not in ("ia", "ca"):
            raise ValueError(f"Unknown Hi-ResNet block '{kind}'; use 'ia' (paper) or 'ca' (authors' code).")
        self.kind = kind
        self.drop_path = drop_path
        self.ia_options = ia_options

    def __call__(self, channels: int) -> nn.Module:
        """A new block of width ``channels``."""
        if self.kind == "ia":
            return InfoAggregationBlock(channels, drop_path=self.drop_path, **self.ia_options)
        return CoordAttentionBlock(channels, drop_path=self.drop_path)


def _down_path(in_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """``steps`` stride-2 halvings, each BN -> 3x3 conv; intermediate steps keep width and end in GELU."""
    layers: list[nn.Module] = []
    for step in range(steps):
        last = step == steps - 1
        layers += [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels if last else in_channels, 3, stride=2, padding=1, bias=False),
        ]
        if not last:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class MultiBranchModule(nn.Module):
    """One high-resolution module: blocks on every branch in parallel, then a fusion exchanging all branches.

    Fusion output i = GELU(sum_j T_ij(x_j)) with T_ii = identity; a lower-resolution input (j > i) goes
    BN -> 1x1 conv -> bilinear upsample (align_corners=True) (spec 2.4: the code's order; the paper draws
    upsample first, which for eval-mode BN and a 1x1 conv is the same map, only dearer); a higher-resolution input
    goes through (i - j) BN -> stride-2 3x3 conv steps.

    Args:
        channels: Width of each branch, highest resolution first.
        num_blocks: Blocks per branch.
        block_factory: Builds one block for a given width.
    """

    def __init__(
        self,
        channels: Sequence[int],
        num_blocks: int,
        block_factory: BlockFactory,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(block_factory(width) for _ in range(num_blocks))) for width in channels
        )
        self.fuse = nn.ModuleList()
        for i, c_out in enumerate(channels):
            row = nn.ModuleList()
            for j, c_in in enumerate(channels):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(nn.Sequential(nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 1, bias=False)))
                else:
                    row.append(_down_path(c_in, c_out, i - j))
            self.fuse.append(row)
        self.act = nn.GELU()

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Transform and fuse the per-branch maps; returns as many maps as came in, same shapes."""
        features = [branch(x) for branch, x in zip(self.branches, features, strict=True)]
        fused: list[Tensor] = []
        for i, row in enumerate(self.fuse):
            target = features[i]
            total = target
            for j, transform in enumerate(cast(nn.ModuleList, row)):
                if j == i:
                    continue
                y = transform(features[j])
                if j > i:
                    y = F.interpolate(y, size=target.shape[-2:], mode="bilinear", align_corners=True)
                total = total + y
            fused.append(self.act(total))
        return fused

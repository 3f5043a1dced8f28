"""Synthetic ConvNeXt checkpoints in the published torchvision, timm and original key layouts, built from the
documented layouts (not from the project's remapping code), plus a functional reference forward pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ATTO_DEPTHS = (2, 2, 6, 2)
ATTO_DIMS = (40, 80, 160, 320)


def _rand(gen: torch.Generator, *shape: int, scale: float = 0.1, offset: float = 0.0) -> Tensor:
    return torch.randn(*shape, generator=gen) * scale + offset


def torchvision_state_dict(depths=ATTO_DEPTHS, dims=ATTO_DIMS, in_channels=3, seed=0) -> dict[str, Tensor]:
    """torchvision ``convnext_*`` layout: features.0 stem, features.{odd} blocks, features.{even} downsampling."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {
        "features.0.0.weight": _rand(g, dims[0], in_channels, 4, 4),
        "features.0.0.bias": _rand(g, dims[0]),
        "features.0.1.weight": _rand(g, dims[0], offset=1.0),
        "features.0.1.bias": _rand(g, dims[0]),
    }
    for s, (depth, c) in enumerate(zip(depths, dims, strict=True)):
        if s > 0:
            p = dims[s - 1]
            sd[f"features.{2 * s}.0.weight"] = _rand(g, p, offset=1.0)
            sd[f"features.{2 * s}.0.bias"] = _rand(g, p)
            sd[f"features.{2 * s}.1.weight"] = _rand(g, c, p, 2, 2)
            sd[f"features.{2 * s}.1.bias"] = _rand(g, c)
        for i in range(depth):
            b = f"features.{2 * s + 1}.{i}"
            sd[f"{b}.layer_scale"] = _rand(g, c, 1, 1, scale=0.3, offset=0.5)
            sd[f"{b}.block.0.weight"] = _rand(g, c, 1, 7, 7)
            sd[f"{b}.block.0.bias"] = _rand(g, c)
            sd[f"{b}.block.2.weight"] = _rand(g, c, offset=1.0)
            sd[f"{b}.block.2.bias"] = _rand(g, c)
            sd[f"{b}.block.3.weight"] = _rand(g, 4 * c, c)
            sd[f"{b}.block.3.bias"] = _rand(g, 4 * c)
            sd[f"{b}.block.5.weight"] = _rand(g, c, 4 * c)
            sd[f"{b}.block.5.bias"] = _rand(g, c)
    sd["classifier.0.weight"] = _rand(g, dims[-1], offset=1.0)
    sd["classifier.0.bias"] = _rand(g, dims[-1])
    sd["classifier.2.weight"] = _rand(g, 10, dims[-1])
    sd["classifier.2.bias"] = _rand(g, 10)
    return sd


def timm_state_dict(depths=ATTO_DEPTHS, dims=ATTO_DIMS, in_channels=3, seed=1, conv_mlp=False) -> dict[str, Tensor]:
    """timm ``convnext_*`` layout: stem.{0,1}, stages.s.downsample.{0,1}, stages.s.blocks.i.{conv_dw,...,gamma}."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {
        "stem.0.weight": _rand(g, dims[0], in_channels, 4, 4),
        "stem.0.bias": _rand(g, dims[0]),
        "stem.1.weight": _rand(g, dims[0], offset=1.0),
        "stem.1.bias": _rand(g, dims[0]),
    }
    k = (1, 1) if conv_mlp else ()
    for s, (depth, c) in enumerate(zip(depths, dims, strict=True)):
        if s > 0:
            p = dims[s - 1]
            sd[f"stages.{s}.downsample.0.weight"] = _rand(g, p, offset=1.0)
            sd[f"stages.{s}.downsample.0.bias"] = _rand(g, p)
            sd[f"stages.{s}.downsample.1.weight"] = _rand(g, c, p, 2, 2)
            sd[f"stages.{s}.downsample.1.bias"] = _rand(g, c)
        for i in range(depth):
            b = f"stages.{s}.blocks.{i}"
            sd[f"{b}.gamma"] = _rand(g, c, scale=0.3, offset=0.5)
            sd[f"{b}.conv_dw.weight"] = _rand(g, c, 1, 7, 7)
            sd[f"{b}.conv_dw.bias"] = _rand(g, c)
            sd[f"{b}.norm.weight"] = _rand(g, c, offset=1.0)
            sd[f"{b}.norm.bias"] = _rand(g, c)
            sd[f"{b}.mlp.fc1.weight"] = _rand(g, 4 * c, c, *k)
            sd[f"{b}.mlp.fc1.bias"] = _rand(g, 4 * c)
            sd[f"{b}.mlp.fc2.weight"] = _rand(g, c, 4 * c, *k)
            sd[f"{b}.mlp.fc2.bias"] = _rand(g, c)
    sd["head.norm.weight"] = _rand(g, dims[-1], offset=1.0)
    sd["head.norm.bias"] = _rand(g, dims[-1])
    sd["head.fc.weight"] = _rand(g, 10, dims[-1])
    sd["head.fc.bias"] = _rand(g, 10)
    return sd


def facebook_state_dict(depths=ATTO_DEPTHS, dims=ATTO_DIMS, in_channels=3, seed=2) -> dict[str, Tensor]:
    """Original release layout: downsample_layers.{0..3}, stages.s.i.{dwconv,norm,pwconv1,pwconv2,gamma}."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {
        "downsample_layers.0.0.weight": _rand(g, dims[0], in_channels, 4, 4),
        "downsample_layers.0.0.bias": _rand(g, dims[0]),
        "downsample_layers.0.1.weight": _rand(g, dims[0], offset=1.0),
        "downsample_layers.0.1.bias": _rand(g, dims[0]),
    }
    for s, (depth, c) in enumerate(zip(depths, dims, strict=True)):
        if s > 0:
            p = dims[s - 1]
            sd[f"downsample_layers.{s}.0.weight"] = _rand(g, p, offset=1.0)
            sd[f"downsample_layers.{s}.0.bias"] = _rand(g, p)
            sd[f"downsample_layers.{s}.1.weight"] = _rand(g, c, p, 2, 2)
            sd[f"downsample_layers.{s}.1.bias"] = _rand(g, c)
        for i in range(depth):
            b = f"stages.{s}.{i}"
            sd[f"{b}.gamma"] = _rand(g, c, scale=0.3, offset=0.5)
            sd[f"{b}.dwconv.weight"] = _rand(g, c, 1, 7, 7)
            sd[f"{b}.dwconv.bias"] = _rand(g, c)
            sd[f"{b}.norm.weight"] = _rand(g, c, offset=1.0)
            sd[f"{b}.norm.bias"] = _rand(g, c)
            sd[f"{b}.pwconv1.weight"] = _rand(g, 4 * c, c)
            sd[f"{b}.pwconv1.bias"] = _rand(g, 4 * c)
            sd[f"{b}.pwconv2.weight"] = _rand(g, c, 4 * c)
            sd[f"{b}.pwconv2.bias"] = _rand(g, c)
    sd["norm.weight"] = _rand(g, dims[-1], offset=1.0)
    sd["norm.bias"] = _rand(g, dims[-1])
    sd["head.weight"] = _rand(g, 10, dims[-1])
    sd["head.bias"] = _rand(g, 10)
    return sd


def _channel_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """LayerNorm over C of (B, C, H, W), eps 1e-6, via F.layer_norm on a channels-last view."""
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps=1e-6)
    return y.permute(0, 3, 1, 2)


def reference_forward_torchvision(sd: dict[str, Tensor], x: Tensor, depths=ATTO_DEPTHS) -> list[Tensor]:
    """ConvNeXt stage outputs computed functionally from a torchvision-layout state dict (eval: no drop path)."""
    x = F.conv2d(x, sd["features.0.0.weight"], sd["features.0.0.bias"], stride=4)
    x = _channel_norm(x, sd["features.0.1.weight"], sd["features.0.1.bias"])
    outs = []
    for s, depth in enumerate(depths):
        if s > 0:
            x = _channel_norm(x, sd[f"features.{2 * s}.0.weight"], sd[f"features.{2 * s}.0.bias"])
            x = F.conv2d(x, sd[f"features.{2 * s}.1.weight"], sd[f"features.{2 * s}.1.bias"], stride=2)
        for i in range(depth):
            b = f"features.{2 * s + 1}.{i}"
            c = x.shape[1]
            y = F.conv2d(x, sd[f"{b}.block.0.weight"], sd[f"{b}.block.0.bias"], padding=3, groups=c)
            y = _channel_norm(y, sd[f"{b}.block.2.weight"], sd[f"{b}.block.2.bias"])
            y = F.conv2d(y, sd[f"{b}.block.3.weight"][:, :, None, None], sd[f"{b}.block.3.bias"])
            y = F.gelu(y)
            y = F.conv2d(y, sd[f"{b}.block.5.weight"][:, :, None, None], sd[f"{b}.block.5.bias"])
            x = x + sd[f"{b}.layer_scale"] * y
        outs.append(x)
    return outs

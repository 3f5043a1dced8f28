"""Small building blocks shared by the segmentation models (Hi-ResNet, BiCoR-Seg).

Clean-room implementations of standard layers, written from their textbook definitions:

* :class:`ConvBnAct`: conv -> BatchNorm -> activation, the workhorse of every head;
* :class:`LayerNorm2d`: LayerNorm over the channel axis of a (B, C, H, W) map (ConvNeXt style);
* :class:`DropPath`: stochastic depth per sample (Huang et al., ECCV 2016);
* :class:`SqueezeExcite`: channel attention (Hu et al., CVPR 2018);
* :class:`WindowAttention` plus :func:`window_partition` / :func:`window_reverse`: multi-head self-attention
  inside non-overlapping L x L windows (Liu et al., "Swin Transformer", ICCV 2021), without shift;
* :class:`CoordinateAttention`: attention pooled along H and W separately (Hou et al., CVPR 2021).

Everything here is plain ``torch.nn`` and exports to ONNX with opset 17.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvBnAct",
    "CoordinateAttention",
    "DropPath",
    "LayerNorm2d",
    "SqueezeExcite",
    "WindowAttention",
    "drop_path",
    "window_partition",
    "window_reverse",
]


class ConvBnAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation (GELU by default), with "same" padding for odd kernels.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel edge (odd).
        stride: Convolution stride.
        dilation: Convolution dilation; the padding grows with it so the size is kept at stride 1.
        groups: Convolution groups (``in_channels`` for a depthwise conv).
        bias: Whether the conv has a bias (redundant before BatchNorm, but some published designs keep it).
        act: Activation module class, or None for no activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        act: type[nn.Module] | None = nn.GELU,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias),
            nn.BatchNorm2d(out_channels),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a channels-first (B, C, H, W) tensor, each pixel normalised on its own.

    Args:
        num_channels: C.
        eps: Added to the variance for numerical stability.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (B, C, H, W) over C."""
        # Explicit mean/var (not F.layer_norm on a permuted view) keeps the ONNX graph free of transposes.
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Zero whole samples of a residual branch with probability ``drop_prob``, rescaling the survivors.

    Args:
        x: Residual branch output, batch first.
        drop_prob: Probability of dropping each sample's branch.
        training: Only active in training mode; identity otherwise.

    Returns:
        ``x`` with dropped samples zeroed and kept ones divided by the keep probability (unbiased in expectation).
    """
    if drop_prob <= 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(mask_shape).bernoulli_(keep_prob)
    return x * mask / keep_prob


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) as a module; identity in eval mode or when ``drop_prob`` is 0.

    Args:
        drop_prob: Probability of dropping a sample's residual branch, in [0, 1).
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}; use 0 to disable stochastic depth.")
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        """Apply stochastic depth."""
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        """Show the rate in ``print(model)``."""
        return f"drop_prob={self.drop_prob:.3f}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 conv -> SiLU -> 1x1 conv -> sigmoid -> rescale.

    Args:
        channels: C.
        reduction: The hidden width is ``max(1, C // reduction)``.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """Rescale every channel of x by a learned gate in (0, 1)."""
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = torch.sigmoid(self.expand(self.act(self.reduce(scale))))
        return x * scale


def window_partition(x: Tensor, window: int) -> Tensor:
    """Cut a (B, C, H, W) map into (B * H/L * W/L, L*L, C) token groups, one per L x L window.

    H and W must be multiples of ``window`` (pad first).
    """
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // window, window, w // window, window)
    # (B, nH, nW, L, L, C): windows first, then the L*L positions as tokens, channels as the token dim.
    x = x.permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, window * window, c)


def window_reverse(tokens: Tensor, window: int, batch: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nH * nW, L*L, C) back to (B, C, H, W)."""
    c = tokens.shape[-1]
    x = tokens.reshape(batch, height // window, width // window, window, window, c)
    x = x.permute(0, 5, 1, 3, 2, 4)
    return x.reshape(batch, c, height, width)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping L x L windows of a (B, C, H, W) map (no shift).

    The map is zero-padded at the bottom/right to a multiple of L and cropped back afterwards, so any H, W work.
    Padded positions take part in attention as zero tokens (their key is the qkv bias), as in Swin's padding.

    Args:
        channels: Token dimension C.
        num_heads: Number of heads; must divide C.
        window: Window edge L in pixels.
    """

    def __init__(self, channels: int, num_heads: int, window: int = 8) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels={channels} is not divisible by num_heads={num_heads}; pick a divisor.")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.window = window
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(channels, 3 * channels, bias=True)
        self.proj = nn.Linear(channels, channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """Attend within windows; returns a map of the same shape as x."""
        b, c, h, w = x.shape
        win = self.window
        pad_h = (win - h % win) % win
        pad_w = (win - w % win) % win
        # Padded even by zero: a Python ``if`` would be frozen into a traced (ONNX) graph at the trace size.
        x = F.pad(x, (0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        tokens = window_partition(x, win)  # (N, T, C)
        n, t, _ = tokens.shape
        qkv = self.qkv(tokens).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, T, d)
        # Written out rather than F.scaled_dot_product_attention so the TorchScript ONNX exporter emits plain
        # MatMul/Softmax nodes that ONNX Runtime (and its int8 quantiser) handle everywhere.
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, t, c)
        out = self.proj(out)
        y = window_reverse(out, win, b, hp, wp)
        return y[:, :, :h, :w]


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al. 2021): gates from pooling along H and along W separately.

    Args:
        channels: C.
        reduction: The hidden width is ``max(8, C // reduction)``.
    """

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.squeeze = ConvBnAct(channels, hidden, kernel_size=1, bias=True)
        self.gate_h = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate_w = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """Multiply x by a per-row gate and a per-column gate."""
        h, w = x.shape[2], x.shape[3]
        pooled_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1)
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.squeeze(torch.cat([pooled_h, pooled_w], dim=2))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        gate_h = torch.sigmoid(self.gate_h(y_h))
        gate_w = torch.sigmoid(self.gate_w(y_w.transpose(2, 3)))
        return x * gate_h * gate_w

"""ConvNeXt image encoder with multi-scale feature taps, plus a loader for local torchvision / timm checkpoints.

Paper: Zhuang Liu, Hanzi Mao, Chao-Yuan Wu, Christoph Feichtenhofer, Trevor Darrell, Saining Xie,
"A ConvNet for the 2020s", CVPR 2022 (arXiv:2201.03545).

Clean-room note: written here from the paper's description (patchify stem, 7x7 depthwise conv, LayerNorm,
4x inverted MLP, layer scale, stochastic depth, LN + 2x2 stride-2 downsampling) because torchvision does not
import beside this project's torch wheel. No code was copied from torchvision, timm or the original repository;
only the published checkpoint *key layouts* are used (as facts) so their weights can be loaded from a local file.

Nothing here downloads anything: :func:`load_convnext_checkpoint` reads a file you already have.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError, ModelLoadError
from .base import strip_wrapper_prefixes
from .layers import DropPath, LayerNorm2d

__all__ = [
    "CONVNEXT_CONFIGS",
    "ConvNeXt",
    "ConvNeXtBlock",
    "ConvNeXtConfig",
    "ConvNeXtLoadReport",
    "build_convnext",
    "detect_convnext_layout",
    "load_convnext_checkpoint",
    "read_state_dict",
    "remap_convnext_state_dict",
    "rename_convnext_key",
]

logger = logging.getLogger(__name__)

CheckpointLayout = Literal["native", "torchvision", "timm", "facebook"]


@dataclass(frozen=True)
class ConvNeXtConfig:
    """One ConvNeXt size.

    Attributes:
        depths: Blocks per stage (4 stages).
        dims: Channels per stage.
        drop_path_rate: Default stochastic-depth rate of the last block (linearly increasing from 0).
    """

    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    drop_path_rate: float


#: Sizes from the ConvNeXt paper (tiny/small/base/large) and the small CPU-friendly sizes published for it
#: later (atto/femto/pico/nano). Stochastic-depth defaults follow the ImageNet-1K recipes.
CONVNEXT_CONFIGS: dict[str, ConvNeXtConfig] = {
    "atto": ConvNeXtConfig((2, 2, 6, 2), (40, 80, 160, 320), 0.0),
    "femto": ConvNeXtConfig((2, 2, 6, 2), (48, 96, 192, 384), 0.0),
    "pico": ConvNeXtConfig((2, 2, 6, 2), (64, 128, 256, 512), 0.0),
    "nano": ConvNeXtConfig((2, 2, 8, 2), (80, 160, 320, 640), 0.1),
    "tiny": ConvNeXtConfig((3, 3, 9, 3), (96, 192, 384, 768), 0.1),
    "small": ConvNeXtConfig((3, 3, 27, 3), (96, 192, 384, 768), 0.4),
    "base": ConvNeXtConfig((3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
    "large": ConvNeXtConfig((3, 3, 27, 3), (192, 384, 768, 1536), 0.5),
}


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C) -> layer scale, plus residual.

    Args:
        dim: Channels C.
        drop_path: Stochastic-depth probability of this block's residual branch.
        layer_scale_init: Initial value of the per-channel output scale.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = self.dwconv(x).permute(0, 2, 3, 1)  # channels-last so LayerNorm and Linear act per pixel
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        y = (y * self.layer_scale).permute(0, 3, 1, 2)
        out: Tensor = x + self.drop_path(y)
        return out


class Stem(nn.Module):
    """Patchify stem: 4x4 conv with stride 4, then LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, kernel_size=4, stride=4)
        self.norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, dim, H/4, W/4)."""
        out: Tensor = self.norm(self.conv(x))
        return out


class Downsample(nn.Module):
    """LayerNorm over channels, then 2x2 conv with stride 2 (between stages)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_dim, eps=1e-6)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim, H, W) -> (B, out_dim, H/2, W/2)."""
        out: Tensor = self.conv(self.norm(x))
        return out


class ConvNeXtStage(nn.Module):
    """Optional downsampling followed by a sequence of :class:`ConvNeXtBlock`."""

    def __init__(self, downsample: nn.Module, blocks: list[ConvNeXtBlock]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Downsample, then run the blocks."""
        out: Tensor = self.blocks(self.downsample(x))
        return out


class ConvNeXt(nn.Module):
    """ConvNeXt feature extractor (no classification head) returning the output of all four stages.

    Input (B, in_channels, H, W) with H, W multiples of 32; :meth:`forward_features` returns four maps with
    ``out_channels`` channels at ``strides`` (4, 8, 16, 32).

    Args:
        depths: Blocks per stage.
        dims: Channels per stage.
        in_channels: Input bands.
        drop_path_rate: Stochastic depth of the last block; block j of n gets ``rate * j / (n - 1)``.
        layer_scale_init: Initial layer-scale value of every block.
    """

    size_divisor_px: int = 32

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 27, 3),
        dims: tuple[int, ...] = (128, 256, 512, 1024),
        in_channels: int = 3,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise InvalidInputError(f"ConvNeXt needs 4 depths and 4 dims, got {depths} and {dims}.")
        self.in_channels = in_channels
        self.out_channels: tuple[int, ...] = tuple(dims)
        self.strides: tuple[int, ...] = (4, 8, 16, 32)
        self.stem = Stem(in_channels, dims[0])
        total = sum(depths)
        rates = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]
        stages: list[ConvNeXtStage] = []
        first = 0
        for s, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            down: nn.Module = nn.Identity() if s == 0 else Downsample(dims[s - 1], dim)
            blocks = [ConvNeXtBlock(dim, rates[first + j], layer_scale_init) for j in range(depth)]
            stages.append(ConvNeXtStage(down, blocks))
            first += depth
        self.stages = nn.ModuleList(stages)
        self.apply(_init_weights)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Return the four stage outputs, finest first: (B, dims[s], H / 2^(s+2), W / 2^(s+2))."""
        feats: list[Tensor] = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> list[Tensor]:
        """Same as :meth:`forward_features` (the encoder has no head)."""
        return self.forward_features(x)


def _init_weights(module: nn.Module) -> None:
    # Truncated normal (std 0.02) and zero biases, the initialisation the ConvNeXt paper trains from.
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_convnext(
    name: str = "base", in_channels: int = 3, drop_path_rate: float | None = None, layer_scale_init: float = 1e-6
) -> ConvNeXt:
    """Build a ConvNeXt of a named size with random weights.

    Args:
        name: A key of :data:`CONVNEXT_CONFIGS`.
        in_channels: Input bands.
        drop_path_rate: Stochastic depth of the last block; None takes the size's default.
        layer_scale_init: Initial layer-scale value.

    Returns:
        The encoder.

    Raises:
        InvalidInputError: If the name is unknown.
    """
    if name not in CONVNEXT_CONFIGS:
        raise InvalidInputError(f"Unknown ConvNeXt size '{name}'; choose one of: {', '.join(CONVNEXT_CONFIGS)}.")
    cfg = CONVNEXT_CONFIGS[name]
    rate = cfg.drop_path_rate if drop_path_rate is None else drop_path_rate
    return ConvNeXt(cfg.depths, cfg.dims, in_channels, rate, layer_scale_init)


# --------------------------------------------------------------------------------------------------------------
# Checkpoint key layouts. Each rule maps a regex on the source key to our key; keys matching a "drop" pattern
# belong to the classification head, which the encoder does not have.

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]

# torchvision: features.0 = stem (conv, LN); features.{2s+1} = stage s blocks; features.{2s} (s >= 1) =
# downsample (LN, conv); block = Sequential(dwconv, permute, LN, fc1, GELU, fc2, permute) + layer_scale (C, 1, 1).
_TORCHVISION_BLOCK = {"0": "dwconv", "2": "norm", "3": "fc1", "5": "fc2"}
_TORCHVISION_RULES: list[_Rule] = [
    (re.compile(r"features\.0\.0\.(\w+)$"), lambda m: f"stem.conv.{m[1]}"),
    (re.compile(r"features\.0\.1\.(\w+)$"), lambda m: f"stem.norm.{m[1]}"),
    (
        re.compile(r"features\.([1357])\.(\d+)\.block\.([0235])\.(\w+)$"),
        lambda m: f"stages.{int(m[1]) // 2}.blocks.{m[2]}.{_TORCHVISION_BLOCK[m[3]]}.{m[4]}",
    ),
    (
        re.compile(r"features\.([1357])\.(\d+)\.layer_scale$"),
        lambda m: f"stages.{int(m[1]) // 2}.blocks.{m[2]}.layer_scale",
    ),
    (re.compile(r"features\.([246])\.0\.(\w+)$"), lambda m: f"stages.{int(m[1]) // 2}.downsample.norm.{m[2]}"),
    (re.compile(r"features\.([246])\.1\.(\w+)$"), lambda m: f"stages.{int(m[1]) // 2}.downsample.conv.{m[2]}"),
]

# timm: stem.{0,1}; stages.s.downsample.{0,1}; stages.s.blocks.i.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}.
_TIMM_BLOCK = {"conv_dw": "dwconv", "norm": "norm", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
_TIMM_RULES: list[_Rule] = [
    (re.compile(r"stem\.0\.(\w+)$"), lambda m: f"stem.conv.{m[1]}"),
    (re.compile(r"stem\.1\.(\w+)$"), lambda m: f"stem.norm.{m[1]}"),
    (re.compile(r"stages\.(\d)\.downsample\.0\.(\w+)$"), lambda m: f"stages.{m[1]}.downsample.norm.{m[2]}"),
    (re.compile(r"stages\.(\d)\.downsample\.1\.(\w+)$"), lambda m: f"stages.{m[1]}.downsample.conv.{m[2]}"),
    (
        re.compile(r"stages\.(\d)\.blocks\.(\d+)\.(conv_dw|norm|mlp\.fc1|mlp\.fc2)\.(\w+)$"),
        lambda m: f"stages.{m[1]}.blocks.{m[2]}.{_TIMM_BLOCK[m[3]]}.{m[4]}",
    ),
    (re.compile(r"stages\.(\d)\.blocks\.(\d+)\.gamma$"), lambda m: f"stages.{m[1]}.blocks.{m[2]}.layer_scale"),
]

# The original release: downsample_layers.0 = stem; downsample_layers.s (s >= 1) = (LN, conv);
# stages.s.i.{dwconv, norm, pwconv1, pwconv2, gamma}.
_FACEBOOK_BLOCK = {"dwconv": "dwconv", "norm": "norm", "pwconv1": "fc1", "pwconv2": "fc2"}
_FACEBOOK_RULES: list[_Rule] = [
    (re.compile(r"downsample_layers\.0\.0\.(\w+)$"), lambda m: f"stem.conv.{m[1]}"),
    (re.compile(r"downsample_layers\.0\.1\.(\w+)$"), lambda m: f"stem.norm.{m[1]}"),
    (re.compile(r"downsample_layers\.([123])\.0\.(\w+)$"), lambda m: f"stages.{m[1]}.downsample.norm.{m[2]}"),
    (re.compile(r"downsample_layers\.([123])\.1\.(\w+)$"), lambda m: f"stages.{m[1]}.downsample.conv.{m[2]}"),
    (
        re.compile(r"stages\.(\d)\.(\d+)\.(dwconv|norm|pwconv1|pwconv2)\.(\w+)$"),
        lambda m: f"stages.{m[1]}.blocks.{m[2]}.{_FACEBOOK_BLOCK[m[3]]}.{m[4]}",
    ),
    (re.compile(r"stages\.(\d)\.(\d+)\.gamma$"), lambda m: f"stages.{m[1]}.blocks.{m[2]}.layer_scale"),
]

_LAYOUT_RULES: dict[str, list[_Rule]] = {
    "torchvision": _TORCHVISION_RULES,
    "timm": _TIMM_RULES,
    "facebook": _FACEBOOK_RULES,
}
#: Classification-head keys of each layout: expected in full-model checkpoints, dropped without complaint.
_HEAD_PATTERN = re.compile(r"^(classifier|head|norm_pre|norm|fc)\.")
#: Wrappers some training scripts add around the model's keys.
_WRAPPER_PREFIXES = ("module.", "model.", "net.", "backbone.", "encoder.")


@dataclass(frozen=True)
class ConvNeXtLoadReport:
    """What a checkpoint load did.

    Attributes:
        layout: The key layout detected in the checkpoint.
        loaded_keys: Model keys that received a tensor.
        missing_keys: Model keys the checkpoint did not provide (they keep their random initialisation).
        unexpected_keys: Checkpoint keys (original names) that map to nothing in the model.
        dropped_head_keys: Classification-head keys, ignored on purpose.
    """

    layout: CheckpointLayout
    loaded_keys: tuple[str, ...]
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    dropped_head_keys: tuple[str, ...]


def detect_convnext_layout(state_dict: Mapping[str, Tensor]) -> CheckpointLayout:
    """Guess the key layout of a ConvNeXt state dict from its key names.

    Raises:
        ModelLoadError: If no known layout matches.
    """
    keys = list(state_dict)
    if any(k.startswith("features.") for k in keys):
        return "torchvision"
    if any(".conv_dw." in k for k in keys):
        return "timm"
    if any(k.startswith("downsample_layers.") for k in keys):
        return "facebook"
    if any(k.startswith("stem.conv.") for k in keys):
        return "native"
    raise ModelLoadError(
        "The checkpoint is not a ConvNeXt state dict in a known layout (torchvision 'features.*', timm "
        "'stages.*.blocks.*.conv_dw', original 'downsample_layers.*' or this project's 'stem.conv.*'); "
        f"first keys: {keys[:5]}. Pass a ConvNeXt ImageNet checkpoint."
    )


def remap_convnext_state_dict(
    state_dict: Mapping[str, Tensor], layout: CheckpointLayout | None = None
) -> tuple[dict[str, Tensor], list[str], list[str], CheckpointLayout]:
    """Rename a ConvNeXt state dict from a published layout to this module's names.

    Args:
        state_dict: Source tensors; wrapper prefixes (``module.``, ``model.``, ``net.``, ``backbone.``,
            ``encoder.``) shared by every key are stripped.
        layout: Source layout; None detects it.

    Returns:
        ``(renamed, unmatched_source_keys, head_keys, layout)``.
    """
    source = strip_wrapper_prefixes(state_dict, _WRAPPER_PREFIXES)
    layout = layout or detect_convnext_layout(source)
    renamed: dict[str, Tensor] = {}
    unmatched: list[str] = []
    head: list[str] = []
    for key, value in source.items():
        target = rename_convnext_key(key, layout)
        if target is not None:
            renamed[target] = value
        else:
            (head if _HEAD_PATTERN.match(key) else unmatched).append(key)
    return renamed, unmatched, head, layout


def rename_convnext_key(key: str, layout: CheckpointLayout) -> str | None:
    """This module's name for one key of a ConvNeXt checkpoint in ``layout``; None if it is not an encoder key."""
    if layout == "native":
        return None if _HEAD_PATTERN.match(key) else key
    for pattern, target in _LAYOUT_RULES[layout]:
        match = pattern.match(key)
        if match:
            return target(match)
    return None


def read_state_dict(checkpoint: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Read the tensors of a local checkpoint file (or pass a mapping through), unwrapping ``state_dict`` nesting.

    Raises:
        ModelLoadError: Missing or unreadable file, or no state dict inside.
    """
    if isinstance(checkpoint, Mapping):
        state: object = checkpoint
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise ModelLoadError(f"ConvNeXt checkpoint '{path}' does not exist; pass the path of a local .pth file.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, ValueError, EOFError) as exc:
            raise ModelLoadError(
                f"Cannot read '{path}' as a torch checkpoint ({exc}); re-save it with torch.save."
            ) from exc
    # Training checkpoints nest the tensors one level down.
    for nest in ("state_dict", "model", "model_ema"):
        if isinstance(state, Mapping) and nest in state and isinstance(state[nest], Mapping):
            state = state[nest]
    if not isinstance(state, Mapping):
        raise ModelLoadError("The checkpoint holds no state dict; pass a file saved from model.state_dict().")
    return {str(k): v for k, v in state.items() if isinstance(v, Tensor)}


def load_convnext_checkpoint(
    model: ConvNeXt, checkpoint: str | Path | Mapping[str, Tensor], strict: bool = False
) -> ConvNeXtLoadReport:
    """Load a local ConvNeXt checkpoint (torchvision, timm, original or native layout) into ``model``.

    Tensors whose element count matches but whose shape differs (torchvision's (C, 1, 1) layer scale, 1x1-conv
    MLPs) are reshaped. Missing and unexpected keys are logged and returned; the head is dropped silently.

    Args:
        model: The encoder to fill.
        checkpoint: A file path or an in-memory state dict.
        strict: Raise when any model key is missing or any non-head key is unused.

    Returns:
        What was loaded, missing and unexpected.

    Raises:
        ModelLoadError: Unreadable file, unknown layout, a size mismatch (wrong ConvNeXt size), or strict failures.
    """
    renamed, unexpected, head, layout = remap_convnext_state_dict(read_state_dict(checkpoint))
    own = model.state_dict()
    to_load: dict[str, Tensor] = {}
    for key, value in renamed.items():
        if key not in own:
            unexpected.append(key)
            continue
        target = own[key]
        if value.shape != target.shape:
            if value.numel() != target.numel():
                raise ModelLoadError(
                    f"Checkpoint tensor for '{key}' has shape {tuple(value.shape)} but the model expects "
                    f"{tuple(target.shape)}; the checkpoint is a different ConvNeXt size, pick the matching backbone."
                )
            value = value.reshape(target.shape)
        to_load[key] = value.to(dtype=target.dtype)
    missing = sorted(set(own) - set(to_load))
    if strict and (missing or unexpected):
        raise ModelLoadError(
            f"ConvNeXt checkpoint does not fit: missing {missing[:5]} ({len(missing)}), unexpected "
            f"{unexpected[:5]} ({len(unexpected)}); pass strict=False to load what matches."
        )
    model.load_state_dict(to_load, strict=False)
    if missing:
        logger.warning("ConvNeXt checkpoint (%s layout) left %d keys random: %s", layout, len(missing), missing[:10])
    if unexpected:
        logger.warning("ConvNeXt checkpoint has %d unused keys: %s", len(unexpected), unexpected[:10])
    logger.info("Loaded %d ConvNeXt tensors (%s layout); dropped %d head keys.", len(to_load), layout, len(head))
    return ConvNeXtLoadReport(layout, tuple(sorted(to_load)), tuple(missing), tuple(unexpected), tuple(head))

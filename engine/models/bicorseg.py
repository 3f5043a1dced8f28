"""BiCoR-Seg: bidirectional co-refinement of features and class embeddings for land-cover segmentation.

Paper: Jinghao Shi et al., "BiCoR-Seg: Bidirectional Co-Refinement Framework for High-Resolution Remote Sensing
Image Segmentation", Computational Visual Media 2026 (arXiv:2512.20255); code: github.com/ShiJinghao566/BiCoR-Seg.

Clean-room note: the authors' repository has no licence, so nothing was copied from it. This file implements
the project's written spec (``models-spec.md`` sections 3.1-3.2 and decisions B1-B11).

Topology (E = embed_dim, N = classes, L = num_layers), for a (B, C, H, W) input with H, W multiples of 32:

1. encoder (ConvNeXt-Base by default) -> multi-scale maps, finest at 1/4;
2. per-scale projector (per-pixel linear c_s -> E, bias) at native resolution, bilinear to 1/4;
3. fusion: concatenate deepest first, 1x1 conv (S*E -> E, no bias) -> F0;
4. class dictionary CE0 (N, E), trunc-normal(0.02), shared by the batch;
5. L HBIS layers (:mod:`engine.models.hbis`) refine (CE, F) and emit heatmap logits H_l (B, N, H/4, W/4);
6. upsampler PixelShuffle(2) -> LayerNorm -> GELU -> PixelShuffle(2) -> GELU: (B, E/16, H, W); the named CPU
   variant ``bicorseg_small_lu`` uses a learned, image-guided upsampler instead
   (:mod:`engine.models.learned_upsampler`; the paper configurations keep the paper's);
7. classifier: Linear(E -> E/16, no bias) of CE_L, dot product with every pixel -> logits (B, N, H, W);
8. aux head (training only): the same upsampler on F0 against a separate linear of the detached CE0.

The Fisher discriminative loss is computed by the training losses from ``class_embeddings``, not here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError
from .base import SegmentationModel, check_known_options, strip_wrapper_prefixes
from .convnext import CONVNEXT_CONFIGS, build_convnext, load_convnext_checkpoint, read_state_dict
from .hbis import HBISLayer
from .layers import LayerNorm2d
from .learned_upsampler import GuidedUpsampler
from .outputs import SegmentationOutput

__all__ = [
    "BICORSEG",
    "BICORSEG_HI_RESNET",
    "BICORSEG_SMALL",
    "BICORSEG_SMALL_LU",
    "UPSAMPLERS",
    "BiCoRSeg",
    "BiCoRSegConfig",
    "FeatureEncoder",
    "HiResNetEncoder",
    "bicorseg",
    "bicorseg_hi_resnet",
    "bicorseg_small",
    "bicorseg_small_lu",
]

logger = logging.getLogger(__name__)

#: Upsamplers of the BiCoR-Seg head: the paper's weight-free PixelShuffle, or the learned image-guided one.
UPSAMPLERS = ("pixel_shuffle", "guided")


class FeatureEncoder(Protocol):
    """What BiCoR-Seg needs from a backbone: multi-scale maps with declared channels and strides, finest first."""

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Return one (B, out_channels[i], H / strides[i], W / strides[i]) map per scale."""
        ...


class PixelShuffleUpsampler(nn.Module):
    """x4 upsampling without weights except one LayerNorm: PixelShuffle(2) -> LN -> GELU -> PixelShuffle(2) -> GELU.

    Args:
        channels: Input channels E (divisible by 16); the output has E / 16 channels at 4x the resolution.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shuffle1 = nn.PixelShuffle(2)
        # eps 1e-6 as in the authors' upsampler, so their checkpoints give their logits (1e-5 moved them by ~1e-4).
        self.norm = LayerNorm2d(channels // 4, eps=1e-6)
        self.shuffle2 = nn.PixelShuffle(2)
        self.act = nn.GELU()

    def image_features(self, image: Tensor) -> None:
        """Nothing: this upsampler does not look at the image (the interface of the guided one)."""

    def forward(self, x: Tensor, guide: None = None) -> Tensor:
        """(B, E, h, w) -> (B, E/16, 4h, 4w); ``guide`` is unused."""
        x = self.act(self.norm(self.shuffle1(x)))
        return cast(Tensor, self.act(self.shuffle2(x)))


class BiCoRSeg(SegmentationModel):
    """BiCoR-Seg on any :class:`FeatureEncoder` whose finest map is at stride 4.

    Args:
        encoder: The backbone (an ``nn.Module`` honouring :class:`FeatureEncoder`).
        num_classes: N.
        embed_dim: E, divisible by 16.
        num_layers: L, the number of HBIS layers (2 on LoveDA/Vaihingen, 3 on Potsdam).
        topk_ratio: Fraction of pixels per class used by F2CE (0.02 LoveDA, 1.0 ISPRS).
        min_pixels: Lower bound on the number of F2CE pixels per class.
        tau: Heatmap temperature.
        film_lambda: CE2F blend factor.
        in_channels: Input bands.
        size_divisor_px: Input height/width must be multiples of this (32 for ConvNeXt).
        upsampler: ``"pixel_shuffle"`` (the paper's) or ``"guided"`` (learned, image-guided; see
            :mod:`engine.models.learned_upsampler`).

    Output (:class:`SegmentationOutput`): ``logits`` (B, N, H, W) and ``heatmaps`` (H_1..H_L, each
    (B, N, H/4, W/4)) always; in training mode also ``aux_logits`` (B, N, H, W), ``class_embeddings``
    (CE_1..CE_L, each (B, N, E)) and ``initial_class_embeddings`` CE0 (N, E).
    """

    encoder_prefixes = ("encoder.",)
    upsampler: PixelShuffleUpsampler | GuidedUpsampler

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        embed_dim: int = 256,
        num_layers: int = 2,
        topk_ratio: float = 0.02,
        min_pixels: int = 64,
        tau: float = 1.0,
        film_lambda: float = 0.5,
        in_channels: int = 3,
        size_divisor_px: int = 32,
        upsampler: str = "pixel_shuffle",
    ) -> None:
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise InvalidInputError(f"Unknown upsampler '{upsampler}'; choose one of: {', '.join(UPSAMPLERS)}.")
        if num_classes < 1:
            raise InvalidInputError(f"num_classes must be >= 1, got {num_classes}.")
        if embed_dim < 16 or embed_dim % 16:
            raise InvalidInputError(f"embed_dim must be a positive multiple of 16 (got {embed_dim}); e.g. 256.")
        if num_layers < 1:
            raise InvalidInputError(f"num_layers must be >= 1 (got {num_layers}); the paper uses 2 or 3.")
        channels = tuple(int(c) for c in getattr(encoder, "out_channels", ()))
        strides = tuple(int(s) for s in getattr(encoder, "strides", ()))
        if not channels or len(channels) != len(strides) or not hasattr(encoder, "forward_features"):
            raise InvalidInputError(
                "The encoder must declare out_channels and strides and have forward_features(x); wrap it."
            )
        if strides[0] != 4:
            raise InvalidInputError(f"BiCoR-Seg needs the encoder's finest map at stride 4, got strides {strides}.")
        self.encoder = encoder
        self.in_channels = in_channels
        self.size_divisor_px = size_divisor_px
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.feature_strides = strides
        self.projectors = nn.ModuleList([nn.Conv2d(c, embed_dim, kernel_size=1) for c in channels])
        self.fuse = nn.Conv2d(len(channels) * embed_dim, embed_dim, kernel_size=1, bias=False)
        self.class_embed = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.trunc_normal_(self.class_embed, std=0.02)
        self.layers = nn.ModuleList(
            [HBISLayer(embed_dim, topk_ratio, min_pixels, tau, film_lambda) for _ in range(num_layers)]
        )
        self.upsampler: nn.Module = (
            PixelShuffleUpsampler(embed_dim)
            if upsampler == "pixel_shuffle"
            else GuidedUpsampler(embed_dim, in_channels)
        )
        self.classifier = nn.Linear(embed_dim, embed_dim // 16, bias=False)
        self.aux_classifier = nn.Linear(embed_dim, embed_dim // 16, bias=False)

    @property
    def heatmap_count(self) -> int:
        """HBIS layers, each returning class heatmaps (``SegmentationOutput.heatmaps`` has this many)."""
        return len(self.layers)

    def fuse_features(self, feats: list[Tensor]) -> Tensor:
        """Project every scale to E channels, resize to the finest (1/4) grid and fuse: F0 (B, E, H/4, W/4)."""
        size = feats[0].shape[-2:]
        projected = []
        for proj, feat, stride in zip(self.projectors, feats, self.feature_strides, strict=True):
            y = proj(feat)
            if stride != self.feature_strides[0]:  # decided from declared strides, so tracing sees no shape test
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            projected.append(y)
        fused: Tensor = self.fuse(torch.cat(projected[::-1], dim=1))  # deepest scale first, as in the spec
        return fused

    def forward(self, x: Tensor) -> SegmentationOutput:
        """Segment a (B, C, H, W) batch; see the class docstring for the outputs."""
        self.check_input(x)
        feats = cast(FeatureEncoder, self.encoder).forward_features(x)
        feat0 = self.fuse_features(list(feats))
        ce0 = self.class_embed
        ce = ce0.unsqueeze(0).expand(x.shape[0], -1, -1)
        feat = feat0
        heatmaps: list[Tensor] = []
        embeddings: list[Tensor] = []
        for layer in self.layers:
            ce, feat, heat = layer(ce, feat)
            heatmaps.append(heat)
            embeddings.append(ce)
        # Both upsamplers take (features, guide); the guide (image features, or None) is computed once for both heads.
        guide = self.upsampler.image_features(x)
        logits = torch.einsum("bnd,bdhw->bnhw", self.classifier(ce), self.upsampler(feat, guide))
        if not self.training:
            return SegmentationOutput(logits=logits, heatmaps=tuple(heatmaps))
        # The aux head reads the static dictionary detached: its loss trains the encoder, not the table.
        aux = torch.einsum("nd,bdhw->bnhw", self.aux_classifier(ce0.detach()), self.upsampler(feat0, guide))
        return SegmentationOutput(
            logits=logits,
            aux_logits=aux,
            heatmaps=tuple(heatmaps),
            class_embeddings=tuple(embeddings),
            initial_class_embeddings=ce0,
        )


@dataclass(frozen=True)
class BiCoRSegConfig:
    """Options of the BiCoR-Seg builders; every field can be overridden by keyword (e.g. from a model card).

    Attributes:
        backbone: ConvNeXt size (a key of :data:`~engine.models.convnext.CONVNEXT_CONFIGS`) for ``bicorseg`` /
            ``bicorseg_small``; ``"hi_resnet"``, ``"hi_resnet_small"`` or ``"hi_resnet_ca"`` for
            ``bicorseg_hi_resnet``.
        backbone_options: Hi-ResNet config overrides (``bicorseg_hi_resnet`` only).
        embed_dim: E, a multiple of 16.
        num_layers: L, HBIS layers (2 for LoveDA / Vaihingen, 3 for Potsdam).
        topk_ratio: F2CE pixel fraction per class (0.02 LoveDA, 1.0 Potsdam / Vaihingen).
        min_pixels: F2CE lower bound on kept pixels.
        tau: Heatmap temperature.
        film_lambda: CE2F blend factor.
        drop_path: Encoder stochastic depth; None keeps the encoder size's default (0.5 for ConvNeXt-Base).
        in_channels: Input bands.
        pretrained_path: Local encoder checkpoint (ConvNeXt in torchvision / timm / original layout, or a Hi-ResNet
            trained by this project); never downloaded.
        upsampler: ``"pixel_shuffle"`` (the paper's) or ``"guided"`` (learned; ``bicorseg_small_lu``).
    """

    backbone: str = "base"
    backbone_options: Mapping[str, Any] | None = None
    embed_dim: int = 256
    num_layers: int = 2
    topk_ratio: float = 0.02
    min_pixels: int = 64
    tau: float = 1.0
    film_lambda: float = 0.5
    drop_path: float | None = None
    in_channels: int = 3
    pretrained_path: str | None = None
    upsampler: str = "pixel_shuffle"

    def replace(self, **options: Any) -> BiCoRSegConfig:
        """Copy with options changed; an unknown option raises naming the valid ones."""
        check_known_options(options, [f.name for f in dataclasses.fields(self)], "BiCoR-Seg")
        if options.get("pretrained_path") is not None:
            options["pretrained_path"] = str(options["pretrained_path"])
        return dataclasses.replace(self, **options)


#: The paper's configuration (LoveDA: ConvNeXt-Base, E = 256, L = 2, top-k ratio 0.02).
BICORSEG = BiCoRSegConfig()
#: CPU-friendly configuration for the default model: ConvNeXt-Femto, E = 128.
BICORSEG_SMALL = BiCoRSegConfig(backbone="femto", embed_dim=128)
#: The default model's CPU variant: ``bicorseg_small`` with the learned, image-guided upsampler (a full-resolution
#: path for thin roads and villas, and no PixelShuffle lattice).
BICORSEG_SMALL_LU = BiCoRSegConfig(backbone="femto", embed_dim=128, upsampler="guided")
#: BiCoR-Seg decoder on the paper's Hi-ResNet trunk.
BICORSEG_HI_RESNET = BiCoRSegConfig(backbone="hi_resnet")


def _decoder(encoder: nn.Module, num_classes: int, cfg: BiCoRSegConfig, size_divisor_px: int) -> BiCoRSeg:
    return BiCoRSeg(
        encoder,
        num_classes,
        embed_dim=cfg.embed_dim,
        num_layers=cfg.num_layers,
        topk_ratio=cfg.topk_ratio,
        min_pixels=cfg.min_pixels,
        tau=cfg.tau,
        film_lambda=cfg.film_lambda,
        in_channels=cfg.in_channels,
        size_divisor_px=size_divisor_px,
        upsampler=cfg.upsampler,
    )


def _convnext_bicorseg(num_classes: int, cfg: BiCoRSegConfig) -> BiCoRSeg:
    if cfg.backbone not in CONVNEXT_CONFIGS:
        raise InvalidInputError(f"Unknown backbone '{cfg.backbone}'; choose one of: {', '.join(CONVNEXT_CONFIGS)}.")
    if cfg.backbone_options:
        raise InvalidInputError("backbone_options applies to bicorseg_hi_resnet only; use 'backbone' to pick a size.")
    encoder = build_convnext(cfg.backbone, in_channels=cfg.in_channels, drop_path_rate=cfg.drop_path)
    if cfg.pretrained_path:
        if cfg.in_channels != 3:
            raise InvalidInputError(
                f"ImageNet ConvNeXt weights expect 3 input bands, the model has {cfg.in_channels}; "
                "drop pretrained_path or use in_channels=3."
            )
        report = load_convnext_checkpoint(encoder, cfg.pretrained_path)
        logger.info(
            "Encoder weights from %s: %d loaded, %d missing, %d unexpected.",
            cfg.pretrained_path,
            len(report.loaded_keys),
            len(report.missing_keys),
            len(report.unexpected_keys),
        )
    return _decoder(encoder, num_classes, cfg, encoder.size_divisor_px)


def bicorseg(num_classes: int, **options: Any) -> BiCoRSeg:
    """The paper's BiCoR-Seg: ConvNeXt-Base, E = 256, L = 2 (89.51 M parameters at N = 7).

    Args:
        num_classes: N.
        **options: Overrides of :class:`BiCoRSegConfig` (e.g. ``num_layers=3, topk_ratio=1.0`` for Potsdam).

    Returns:
        The model with random weights (encoder from ``pretrained_path`` if given).
    """
    return _convnext_bicorseg(num_classes, BICORSEG.replace(**options))


def bicorseg_small(num_classes: int, **options: Any) -> BiCoRSeg:
    """CPU-friendly BiCoR-Seg: ConvNeXt-Femto (depths 2-2-6-2, dims 48-384), E = 128, L = 2 (5.29 M at N = 7).

    Args:
        num_classes: N.
        **options: Overrides of :class:`BiCoRSegConfig`.

    Returns:
        The model.
    """
    return _convnext_bicorseg(num_classes, BICORSEG_SMALL.replace(**options))


def bicorseg_small_lu(num_classes: int, **options: Any) -> BiCoRSeg:
    """``bicorseg_small`` with the learned, image-guided upsampler (:mod:`engine.models.learned_upsampler`).

    A CPU variant for the default model, not a paper configuration: the encoder, HBIS layers, class dictionary
    and classifier are BiCoR-Seg's; only the weight-free PixelShuffle x4 is replaced (5.3 M parameters).

    Args:
        num_classes: N.
        **options: Overrides of :class:`BiCoRSegConfig`.

    Returns:
        The model.
    """
    return _convnext_bicorseg(num_classes, BICORSEG_SMALL_LU.replace(**options))


class HiResNetEncoder(nn.Module):
    """Hi-ResNet's multi-branch trunk (stem, funnel, branches) as a :class:`FeatureEncoder`, without its heads.

    The maps come from :meth:`HiResNet.forward_features` (finest first, 1/4, 1/8, 1/16 for three branches). The
    coarse / ASP-OCR heads are removed so they neither cost memory nor sit in the optimiser without gradients.

    Args:
        variant: ``"hi_resnet"``, ``"hi_resnet_small"`` or ``"hi_resnet_ca"``.
        options: Overrides of :class:`~engine.models.hi_resnet.HiResNetConfig` (``in_channels``, widths, ...).
    """

    def __init__(self, variant: str = "hi_resnet", options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        from . import hi_resnet  # imported here so BiCoR-Seg on ConvNeXt never depends on the Hi-ResNet module

        variants = {"hi_resnet": hi_resnet.HI_RESNET, "hi_resnet_small": hi_resnet.HI_RESNET_SMALL}
        variants["hi_resnet_ca"] = hi_resnet.HI_RESNET_CA
        if variant not in variants:
            raise InvalidInputError(f"Unknown Hi-ResNet variant '{variant}'; choose one of: {', '.join(variants)}.")
        config = variants[variant].replace(**(options or {}))
        trunk = hi_resnet.HiResNet(num_classes=1, config=config)
        for head in ("coarse_head", "refined_head", "classifier"):
            if hasattr(trunk, head):
                delattr(trunk, head)
        self.trunk = trunk
        self.in_channels = config.in_channels
        self.size_divisor_px = config.size_divisor_px
        self.out_channels: tuple[int, ...] = tuple(config.branch_channels)
        self.strides: tuple[int, ...] = tuple(4 * 2**i for i in range(len(config.branch_channels)))

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Branch outputs, finest (1/4) first."""
        return list(self.trunk.forward_features(x))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x)


def bicorseg_hi_resnet(num_classes: int, **options: Any) -> BiCoRSeg:
    """BiCoR-Seg decoder on a Hi-ResNet trunk (branches at 1/4, 1/8, 1/16; H, W multiples of 16).

    Args:
        num_classes: N.
        **options: Overrides of :class:`BiCoRSegConfig`; ``backbone`` picks the Hi-ResNet variant and
            ``backbone_options`` overrides its :class:`~engine.models.hi_resnet.HiResNetConfig`; ``drop_path`` sets
            its ``drop_path_rate``; ``pretrained_path`` loads the trunk of a Hi-ResNet checkpoint (heads ignored).

    Returns:
        The model.
    """
    cfg = BICORSEG_HI_RESNET.replace(**options)
    hi_options = dict(cfg.backbone_options or {})
    hi_options["in_channels"] = cfg.in_channels
    if cfg.drop_path is not None:
        hi_options["drop_path_rate"] = cfg.drop_path
    encoder = HiResNetEncoder(cfg.backbone, hi_options)
    if cfg.pretrained_path:
        _load_hi_resnet_trunk(encoder, cfg.pretrained_path)
    return _decoder(encoder, num_classes, cfg, encoder.size_divisor_px)


def _load_hi_resnet_trunk(encoder: HiResNetEncoder, path: str | Path) -> None:
    state = read_state_dict(path)
    state = strip_wrapper_prefixes(state, ("module.", "model.", "trunk."))
    own = encoder.trunk.state_dict()
    heads = ("coarse_head.", "refined_head.", "classifier.")
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    unexpected = sorted(k for k in state if k not in usable and not k.startswith(heads))
    missing = sorted(set(own) - set(usable))
    encoder.trunk.load_state_dict(usable, strict=False)
    if missing:
        logger.warning("Hi-ResNet checkpoint left %d encoder keys random: %s", len(missing), missing[:10])
    if unexpected:
        logger.warning("Hi-ResNet checkpoint has %d unused or mis-shaped keys: %s", len(unexpected), unexpected[:10])
    logger.info("Loaded %d Hi-ResNet encoder tensors from %s.", len(usable), path)

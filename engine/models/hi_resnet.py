"""Hi-ResNet: high-resolution segmentation network with a funnel, IA-block branches and an ASP-OCR head.

Paper: Yuxia Chen, Pengcheng Fang, Xiaoling Zhong, Jianhui Yu, Xiaoming Zhang, Tianrui Li. "Hi-ResNet: Edge
Detail Enhancement for High-Resolution Remote Sensing Segmentation." IEEE Journal of Selected Topics in Applied
Earth Observations and Remote Sensing 17 (2024): 15024-15040. arXiv:2305.12691.

Clean-room implementation from the team's spec (``models-spec.md`` section 2) and the paper text. No code was
taken from the authors' repository (``AmberJar/Hi-ResNet`` has no licence). Where paper and code disagree the spec's
decisions H1-H10 are followed; the IA block is a reconstruction (the public code does not contain it).

Topology (paper config, 512 x 512 input)::

    stem: 2 x [BN -> 3x3 conv s2 -> GELU]            64 @ 128^2  (stem_norm="post": conv -> BN -> GELU)
    funnel: 4 IB blocks                              256 @ 128^2
    transition 1 -> 2 branches                       48 @ 128^2, 96 @ 64^2
    stage 2: 1 module of 4 IA blocks per branch
    transition 2 -> 3rd branch                       192 @ 32^2
    stage 3: 4 modules of 12 IA blocks per branch
    refinement: upsample + concat                    336 @ 128^2
    coarse head -> K; ASP-OCR refined head -> 256 -> classifier -> K; both upsampled to the input size.

Outputs (:class:`~engine.models.outputs.SegmentationOutput`):

* training mode: ``logits`` = refined, ``aux_logits`` = coarse, ``refined_logits`` = refined (the losses weight the
  two heads separately, spec 2.7);
* eval mode: ``logits`` = coarse + refined (the paper's 1:1 inference rule, decision H9), ``refined_logits`` =
  refined alone, ``aux_logits`` = None.

Size policy: H and W must be multiples of ``size_divisor_px`` = 2 ** (1 + number of branches), i.e. 16 for three
branches, so that the lowest-resolution branch is an exact 1/16 of the input and every branch lines up with the
others pixel for pixel. The window attention pads each branch to a multiple of its window inside, so no larger
divisor is needed. Other sizes raise :class:`~engine.errors.InvalidInputError` naming the nearest valid size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError
from .base import SegmentationModel, check_known_options
from .hi_resnet_blocks import BlockFactory, FunnelBlock, MultiBranchModule
from .layers import ConvBnAct
from .ocr_head import AspOcrHead, CoarseHead
from .outputs import SegmentationOutput

__all__ = [
    "HI_RESNET",
    "HI_RESNET_CA",
    "HI_RESNET_SMALL",
    "HiResNet",
    "HiResNetConfig",
    "drop_path_schedule",
    "hi_resnet",
    "hi_resnet_ca",
    "hi_resnet_small",
]


@dataclass(frozen=True)
class HiResNetConfig:
    """Architecture of one Hi-ResNet variant; every field can be overridden through the builders' options.

    Attributes:
        in_channels: Input bands.
        stem_channels: Width of the two stride-2 stem convs (funnel part 1).
        funnel_channels: Width of the funnel IB blocks.
        funnel_blocks: Number of IB blocks (paper B1).
        funnel_expansion: Width multiplier inside an IB block.
        branch_channels: Width per branch, highest resolution first (paper C1, C2, C3).
        stage_blocks: Blocks per branch in each module, per stage (paper B2, B3).
        stage_modules: Modules per stage (paper M1, M2).
        block: ``"ia"`` (paper's IA block, reconstructed) or ``"ca"`` (authors' code: conv + coordinate attention).
        window_px: Attention window edge L of the IA block.
        head_dim: Channels per attention head.
        se_reduction: SE hidden width is C / se_reduction.
        dw_kernel: Depthwise kernel of the IA block.
        coarse_head_channels: Hidden width of the coarse head.
        ocr_channels: Width of the ASP-OCR head.
        ocr_key_channels: Width of the object attention.
        aspp_dilations: Dilations of the atrous branches of the ASP-OCR head (on the 1/4-resolution map).
        dropout: Dropout2d probability before the classifier.
        drop_path_rate: Largest stochastic-depth rate of the linear schedule (see :func:`drop_path_schedule`).
        drop_path_slots: Length of the linear schedule (24 in the authors' code).
        layer_scale_init: Initial residual scale of the IB blocks.
        stem_norm: Where the two stride-2 stem convs put BatchNorm: ``"pre"`` (BN -> conv -> GELU, the paper's
            section III-A: "during the network downsampling, the BN layer was placed before the convolution") or
            ``"post"`` (conv -> BN -> GELU, the authors' code). The paper configuration uses ``"pre"``; the small
            and CA variants keep ``"post"`` so their existing checkpoints (state-dict keys) still load.
    """

    in_channels: int = 3
    stem_channels: int = 64
    funnel_channels: int = 256
    funnel_blocks: int = 4
    funnel_expansion: int = 4
    branch_channels: tuple[int, ...] = (48, 96, 192)
    stage_blocks: tuple[int, ...] = (4, 12)
    stage_modules: tuple[int, ...] = (1, 4)
    block: Literal["ia", "ca"] = "ia"
    window_px: int = 8
    head_dim: int = 16
    se_reduction: int = 4
    dw_kernel: int = 7
    coarse_head_channels: int = 512
    ocr_channels: int = 256
    ocr_key_channels: int = 128
    aspp_dilations: tuple[int, ...] = (24, 48, 72)
    dropout: float = 0.1
    drop_path_rate: float = 0.5
    drop_path_slots: int = 24
    layer_scale_init: float = 1e-6
    stem_norm: Literal["pre", "post"] = "pre"

    def __post_init__(self) -> None:
        """Check the fields fit together; messages name the field and the fix."""
        n_stages = len(self.branch_channels) - 1
        if n_stages < 1:
            raise InvalidInputError("Hi-ResNet option 'branch_channels' needs at least 2 widths, e.g. [48, 96, 192].")
        for name in ("stage_blocks", "stage_modules"):
            if len(getattr(self, name)) != n_stages:
                raise InvalidInputError(
                    f"Hi-ResNet option '{name}' needs {n_stages} entries (one per stage: len(branch_channels) - 1)."
                )
        if self.block not in ("ia", "ca"):
            raise InvalidInputError(f"Hi-ResNet option 'block' is '{self.block}'; use 'ia' or 'ca'.")
        if self.block == "ia":
            bad = [c for c in self.branch_channels if c % self.head_dim]
            if bad:
                raise InvalidInputError(
                    f"Hi-ResNet branch widths {bad} are not multiples of head_dim={self.head_dim}; change either."
                )
        if self.stem_norm not in ("pre", "post"):
            raise InvalidInputError(f"Hi-ResNet option 'stem_norm' is '{self.stem_norm}'; use 'pre' or 'post'.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise InvalidInputError("Hi-ResNet option 'drop_path_rate' must be in [0, 1).")

    @property
    def size_divisor_px(self) -> int:
        """Input edges must be multiples of this: stem /4, then /2 per extra branch."""
        return 1 << (1 + len(self.branch_channels))

    def replace(self, **options: Any) -> HiResNetConfig:
        """Copy with options changed; JSON lists become tuples; an unknown option raises naming the valid ones."""
        check_known_options(options, [f.name for f in dataclasses.fields(self)], "Hi-ResNet")
        fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        return dataclasses.replace(self, **fixed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists), suitable for a model card's ``architecture_args``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: The paper's configuration (Table II): channels (48, 96, 192), blocks (4, 4, 12), modules (1, 4).
HI_RESNET = HiResNetConfig()
#: CPU-friendly variant for the default model: same topology, narrower and shallower.
HI_RESNET_SMALL = HiResNetConfig(
    stem_channels=32,
    funnel_channels=64,
    funnel_blocks=2,
    branch_channels=(32, 64, 128),
    stage_blocks=(2, 2),
    stage_modules=(1, 2),
    coarse_head_channels=64,
    ocr_channels=64,
    ocr_key_channels=32,
    aspp_dilations=(12, 24, 36),
    drop_path_rate=0.2,
    stem_norm="post",  # unchanged since its first release, so trained hi_resnet_small checkpoints keep loading
)
#: The authors' public-code block (conv + coordinate attention) at the paper's widths (spec 2.3, "Hi-ResNet-CA"),
#: with their code's conv -> BN stem.
HI_RESNET_CA = HiResNetConfig(block="ca", stem_norm="post")


def drop_path_schedule(config: HiResNetConfig) -> tuple[list[float], list[list[float]]]:
    """Stochastic-depth rates, as in the authors' code: one linear ramp, sampled at fixed slots.

    rates = linspace(0, drop_path_rate, drop_path_slots); funnel block i takes rates[i]; every block of module m
    in stage s (s = 0 for the paper's stage 2) takes rates[(s + 1) * funnel_blocks + m]. For the paper config this
    gives funnel 0, .022, .043, .065; stage 2: .087; stage 3: .174, .196, .217, .239 (spec 2.4).

    Returns:
        (rates of the funnel blocks, per stage the rate of each module).
    """
    needed = len(config.stage_modules) * config.funnel_blocks + max(config.stage_modules)
    slots = max(config.drop_path_slots, needed)
    # Plain Python (not torch.linspace) so the model can be built under a ``torch.device("meta")`` context.
    rates = [config.drop_path_rate * i / (slots - 1) if slots > 1 else 0.0 for i in range(slots)]
    funnel = rates[: config.funnel_blocks]
    stages = [
        [rates[(s + 1) * config.funnel_blocks + m] for m in range(n_modules)]
        for s, n_modules in enumerate(config.stage_modules)
    ]
    return funnel, stages


def _transition(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """BN -> 3x3 conv -> GELU: starts a branch (stride 2 halves the resolution)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GELU(),
    )


class HiResNet(SegmentationModel):
    """Hi-ResNet segmentation model (see the module docstring for topology, outputs and size policy).

    Args:
        num_classes: K.
        config: The architecture.
    """

    #: The multi-branch trunk (everything but the coarse / ASP-OCR heads and the classifier).
    encoder_prefixes = ("stem.", "funnel.", "first_transition.", "new_branches.", "stages.")

    def __init__(self, num_classes: int, config: HiResNetConfig = HI_RESNET) -> None:
        super().__init__()
        if num_classes < 1:
            raise InvalidInputError(f"num_classes must be at least 1, got {num_classes}.")
        self.config = config
        self.num_classes = num_classes
        self.in_channels = config.in_channels
        self.size_divisor_px = config.size_divisor_px
        funnel_rates, stage_rates = drop_path_schedule(config)
        widths = config.branch_channels

        if config.stem_norm == "pre":
            self.stem = nn.Sequential(
                _transition(config.in_channels, config.stem_channels, 2),
                _transition(config.stem_channels, config.stem_channels, 2),
            )
        else:
            self.stem = nn.Sequential(
                ConvBnAct(config.in_channels, config.stem_channels, 3, stride=2),
                ConvBnAct(config.stem_channels, config.stem_channels, 3, stride=2),
            )
        self.funnel = nn.Sequential(
            *(
                FunnelBlock(
                    config.stem_channels if i == 0 else config.funnel_channels,
                    config.funnel_channels,
                    config.funnel_expansion,
                    rate,
                    config.layer_scale_init,
                )
                for i, rate in enumerate(funnel_rates)
            )
        )
        # Transition 1 makes two branches from the funnel; each later one adds a branch from the lowest one.
        self.first_transition = nn.ModuleList(
            [_transition(config.funnel_channels, widths[0], 1), _transition(config.funnel_channels, widths[1], 2)]
        )
        self.new_branches = nn.ModuleList(_transition(widths[s], widths[s + 1], 2) for s in range(1, len(widths) - 1))
        ia_options = {
            "window_px": config.window_px,
            "head_dim": config.head_dim,
            "se_reduction": config.se_reduction,
            "dw_kernel": config.dw_kernel,
        }
        self.stages = nn.ModuleList()
        for s, (n_blocks, rates) in enumerate(zip(config.stage_blocks, stage_rates, strict=True)):
            modules = (
                MultiBranchModule(widths[: s + 2], n_blocks, BlockFactory(config.block, rate, **ia_options))
                for rate in rates
            )
            self.stages.append(nn.ModuleList(modules))

        concat_channels = sum(widths)
        self.coarse_head = CoarseHead(concat_channels, config.coarse_head_channels, num_classes)
        self.refined_head = AspOcrHead(
            concat_channels, config.ocr_channels, config.ocr_key_channels, config.aspp_dilations, config.dropout
        )
        self.classifier = nn.Conv2d(config.ocr_channels, num_classes, 1, bias=False)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Multi-resolution features, highest resolution (1/4) first."""
        x = self.funnel(self.stem(x))
        features = [transition(x) for transition in self.first_transition]
        for s, stage in enumerate(self.stages):
            if s > 0:
                features.append(self.new_branches[s - 1](features[-1]))
            for module in cast(nn.ModuleList, stage):
                features = module(features)
        return features

    def forward(self, x: Tensor) -> SegmentationOutput:
        """Segment a (B, C, H, W) batch; see the module docstring for what training and eval return.

        Raises:
            InvalidInputError: Wrong band count, or H/W not multiples of ``size_divisor_px``.
        """
        self.check_input(x)
        features = self.forward_features(x)
        size = features[0].shape[-2:]
        upsampled = [features[0]] + [
            F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in features[1:]
        ]
        concat = torch.cat(upsampled, dim=1)
        coarse = self.coarse_head(concat)
        refined = self.classifier(self.refined_head(concat, coarse))
        out_size = x.shape[-2:]
        coarse = F.interpolate(coarse, size=out_size, mode="bilinear", align_corners=True)
        refined = F.interpolate(refined, size=out_size, mode="bilinear", align_corners=True)
        if self.training:
            return SegmentationOutput(logits=refined, aux_logits=coarse, refined_logits=refined)
        return SegmentationOutput(logits=coarse + refined, refined_logits=refined)


def _build(base: HiResNetConfig, num_classes: int, options: Mapping[str, Any]) -> HiResNet:
    return HiResNet(num_classes, base.replace(**options))


def hi_resnet(num_classes: int, **options: Any) -> HiResNet:
    """The paper's Hi-ResNet (about 25.3 M parameters with K = 7); options override :class:`HiResNetConfig`."""
    return _build(HI_RESNET, num_classes, options)


def hi_resnet_small(num_classes: int, **options: Any) -> HiResNet:
    """Narrow, shallow Hi-ResNet for CPU training and inference; options override :data:`HI_RESNET_SMALL`."""
    return _build(HI_RESNET_SMALL, num_classes, options)


def hi_resnet_ca(num_classes: int, **options: Any) -> HiResNet:
    """Hi-ResNet with the authors' public-code branch block (conv + coordinate attention), paper widths."""
    return _build(HI_RESNET_CA, num_classes, options)

"""LossConfig: every weight and option of the two models' training losses, validated once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engine.errors import InvalidInputError
from engine.model_card import NODATA_CLASS

from .cross_entropy import SmoothingSpread

#: The two loss recipes; model variant names map to them by prefix (see :func:`resolve_model_family`).
ModelFamily = Literal["hi_resnet", "bicorseg", "reference"]

#: Label smoothing used by each family when ``LossConfig.label_smoothing`` is None (Hi-ResNet LSCE 0.1; GeoSeg
#: SoftCE 0.05).
DEFAULT_LABEL_SMOOTHING: dict[str, float] = {"hi_resnet": 0.1, "bicorseg": 0.05, "reference": 0.1}
#: Where each family puts the smoothing mass when ``LossConfig.smoothing_spread`` is None: Hi-ResNet's eq. 4 spreads
#: ε over the K-1 other classes; GeoSeg's SoftCE (BiCoR-Seg's code) over all K.
DEFAULT_SMOOTHING_SPREAD: dict[str, SmoothingSpread] = {
    "hi_resnet": "others",
    "bicorseg": "uniform",
    "reference": "uniform",
}


def resolve_model_family(model_name: str) -> ModelFamily:
    """Loss family of a model name: "bicorseg*" -> "bicorseg", "hi_resnet*" -> "hi_resnet", "unet" -> "reference".

    Checked in that order, so "bicorseg_hi_resnet" (BiCoR-Seg on a Hi-ResNet backbone) is a BiCoR-Seg model.

    Raises:
        InvalidInputError: For any other name.
    """
    if model_name.startswith("bicorseg"):
        return "bicorseg"
    if model_name.startswith("hi_resnet"):
        return "hi_resnet"
    if model_name == "unet":
        return "reference"
    raise InvalidInputError(
        f"No loss recipe for model '{model_name}'; use a name starting with 'hi_resnet' or 'bicorseg', or 'unet'."
    )


def _as_tuple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


@dataclass(frozen=True)
class LossConfig:
    """Options of :func:`training.losses.build_loss`; the defaults reproduce the papers and spec decisions.

    Sequences given as lists (e.g. from YAML) are stored as tuples.

    Attributes:
        num_classes: K, the number of classes (>= 2).
        ignore_index: Label of ignored pixels; must not be a class index.
        label_smoothing: CE smoothing ε; None takes the family's value (Hi-ResNet 0.1, BiCoR-Seg 0.05).
        smoothing_spread: Hi-ResNet's LSCE: ``"others"`` (ε/(K-1) on each wrong class, its paper's eq. 4, the
            default) or ``"uniform"`` (ε/K on every class); BiCoR-Seg always uses GeoSeg's ``"uniform"`` SoftCE.
        geoseg_compat: BiCoR-Seg only: GeoSeg's means (SoftCE over all pixels, Dice over all classes, decision B10).
        head_weights: Hi-ResNet (GD, LSCE, CEA) weights of each head (paper: 0.3923, 0.3923, 0.2153).
        coarse_weight: Hi-ResNet weight of the coarse head's loss (paper: 1).
        refined_weight: Hi-ResNet weight of the refined head's loss (paper: 1).
        cea_max_distance_px: CEA distance cap T (spec: 32).
        cea_exponent: CEA exponent α (spec: 2).
        cea_seed: Seed of the generator drawing CEA's class; None uses torch's global generator.
        aux_weight: BiCoR-Seg weight of SoftCE on the auxiliary logits (0.4).
        heatmap_weight: BiCoR-Seg λ of the heatmap supervision (0.1).
        heatmap_betas: β_l per HBIS layer; None means 1 for every layer (decision B11).
        fisher_weight: BiCoR-Seg λ of the per-layer Fisher losses (0.1).
        fisher_alphas: α_l per layer for the Fisher losses; None means 1 for every layer.
        has_fisher_loss: BiCoR-Seg's in-model Fisher loss on the last layer (LoveDA only, decision B2).
        last_fisher_weight: Weight of that last-layer Fisher loss (1.0).
        dice_smooth: BiCoR-Seg soft Dice smoothing (0.05).
        dice_eps: BiCoR-Seg soft Dice denominator floor (1e-7).
        lossd_weight: λ_d of Lossd on the main logits; 0 turns Lossd off (recommended when on: 1.0).
        lossd_max_iter: Lossd distance cap T (official: 50).
        lossd_downsample: Evaluate Lossd on every n-th pixel per axis (2 = half resolution).
        lossd_on_coarse: Hi-ResNet only: also apply Lossd (same weight) to the coarse logits.
        lossd_class_weights: Optional Lossd weight per class (K entries).
    """

    num_classes: int
    ignore_index: int = NODATA_CLASS
    label_smoothing: float | None = None
    smoothing_spread: SmoothingSpread | None = None
    geoseg_compat: bool = True
    head_weights: tuple[float, float, float] = (0.3923, 0.3923, 0.2153)
    coarse_weight: float = 1.0
    refined_weight: float = 1.0
    cea_max_distance_px: int = 32
    cea_exponent: float = 2.0
    cea_seed: int | None = None
    aux_weight: float = 0.4
    heatmap_weight: float = 0.1
    heatmap_betas: tuple[float, ...] | None = None
    fisher_weight: float = 0.1
    fisher_alphas: tuple[float, ...] | None = None
    has_fisher_loss: bool = False
    last_fisher_weight: float = 1.0
    dice_smooth: float = 0.05
    dice_eps: float = 1e-7
    lossd_weight: float = 0.0
    lossd_max_iter: int = 50
    lossd_downsample: int = 1
    lossd_on_coarse: bool = False
    lossd_class_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("heatmap_betas", "fisher_alphas", "lossd_class_weights"):
            object.__setattr__(self, name, _as_tuple(getattr(self, name)))
        object.__setattr__(self, "head_weights", tuple(float(w) for w in self.head_weights))
        if self.num_classes < 2:
            raise InvalidInputError(f"num_classes is {self.num_classes}; a segmentation loss needs at least 2.")
        if 0 <= self.ignore_index < self.num_classes:
            raise InvalidInputError(
                f"ignore_index {self.ignore_index} is also a class index (0..{self.num_classes - 1}); "
                "use a label outside the classes, e.g. 255."
            )
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise InvalidInputError(f"label_smoothing is {self.label_smoothing}; use a value in [0, 1) or None.")
        if self.smoothing_spread not in (None, "uniform", "others"):
            raise InvalidInputError(
                f"smoothing_spread is {self.smoothing_spread!r}; use 'others' (Hi-ResNet), 'uniform' (GeoSeg) or None."
            )
        if len(self.head_weights) != 3:
            raise InvalidInputError(f"head_weights has {len(self.head_weights)} entries; give three: (GD, LSCE, CEA).")
        for name in ("cea_max_distance_px", "lossd_max_iter"):
            if not 1 <= getattr(self, name) <= 255:
                raise InvalidInputError(f"{name} is {getattr(self, name)}; use a distance cap from 1 to 255 pixels.")
        if self.lossd_downsample < 1:
            raise InvalidInputError(f"lossd_downsample is {self.lossd_downsample}; use an integer >= 1.")
        self._check_non_negative()
        if self.lossd_class_weights is not None and len(self.lossd_class_weights) != self.num_classes:
            raise InvalidInputError(
                f"lossd_class_weights has {len(self.lossd_class_weights)} entries for {self.num_classes} classes; "
                "give one weight per class or None."
            )

    def _check_non_negative(self) -> None:
        scalars = {
            "coarse_weight": self.coarse_weight,
            "refined_weight": self.refined_weight,
            "aux_weight": self.aux_weight,
            "heatmap_weight": self.heatmap_weight,
            "fisher_weight": self.fisher_weight,
            "last_fisher_weight": self.last_fisher_weight,
            "lossd_weight": self.lossd_weight,
        }
        sequences = {
            "head_weights": self.head_weights,
            "heatmap_betas": self.heatmap_betas or (),
            "fisher_alphas": self.fisher_alphas or (),
            "lossd_class_weights": self.lossd_class_weights or (),
        }
        for name, value in scalars.items():
            if value < 0:
                raise InvalidInputError(f"{name} is {value}; loss weights must be >= 0 (0 turns a term off).")
        for name, values in sequences.items():
            if any(v < 0 for v in values):
                raise InvalidInputError(f"{name} has a negative entry {values}; loss weights must be >= 0.")

    def smoothing_for(self, family: ModelFamily) -> float:
        """The CE label smoothing of a family: ``label_smoothing`` if set, else the family default."""
        return DEFAULT_LABEL_SMOOTHING[family] if self.label_smoothing is None else self.label_smoothing

    def spread_for(self, family: ModelFamily) -> SmoothingSpread:
        """Where the family's label smoothing goes: ``smoothing_spread`` if set, else the family default."""
        return DEFAULT_SMOOTHING_SPREAD[family] if self.smoothing_spread is None else self.smoothing_spread

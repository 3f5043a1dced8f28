"""Input bands: which raster bands feed the model, in the card's order, and how their values are normalised.

Band matching (:func:`match_bands`) follows one rule: explicit 1-based ``bands`` win; otherwise each of the card's
``input_bands`` names is looked up in the raster's colour interpretations (``red`` -> the band GDAL calls red),
then in its band descriptions; card bands still unmatched take the raster's remaining non-alpha bands in order
when their number fits exactly. Alpha is never fed to the model: it only marks pixels invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidRasterError
from ..model_card import ModelCard

#: Colour interpretations that carry no band identity (they never match a card band name).
_ANONYMOUS_INTERPS = frozenset({"undefined", "gray", "grey", "palette"})


@dataclass(frozen=True)
class BandLayout:
    """What a raster offers: one entry per band, 1-based band ``i`` at position ``i - 1``.

    Attributes:
        colorinterps: Lower-case GDAL colour interpretation names (``red``, ``alpha``, ``undefined``, ...).
        descriptions: Band descriptions, ``""`` where there is none.
    """

    colorinterps: tuple[str, ...]
    descriptions: tuple[str, ...]

    @property
    def count(self) -> int:
        """Number of bands in the raster."""
        return len(self.colorinterps)

    def summary(self) -> str:
        """One-line description used in error messages, e.g. ``4 bands (blue, green, red, alpha)``."""
        names = [
            interp if not desc else f"{interp} '{desc}'"
            for interp, desc in zip(self.colorinterps, self.descriptions, strict=True)
        ]
        return f"{self.count} band{'s' if self.count != 1 else ''} ({', '.join(names)})"


def match_bands(
    layout: BandLayout, card: ModelCard, bands: Sequence[int] | None = None, raster_name: str = "raster"
) -> tuple[int, ...]:
    """Choose the 1-based raster band indexes that feed the model, in the card's band order.

    Args:
        layout: The raster's bands.
        card: The model card (its ``input_bands`` give names and order).
        bands: Explicit 1-based band indexes in model order; overrides matching.
        raster_name: Name of the raster for error messages.

    Returns:
        One 1-based band index per card input band.

    Raises:
        InvalidRasterError: If the explicit bands are wrong or the bands cannot be matched; the message names the
            raster's bands and the fix (the BANDS option; the command line spells it ``--bands``).
    """
    expected = ", ".join(card.input_bands)
    fix = (
        f"choose {card.num_bands} band number{'s' if card.num_bands != 1 else ''} in the model's order "
        f"({expected}) with BANDS, e.g. BANDS {','.join(str(i + 1) for i in range(card.num_bands))}"
    )
    if bands is not None:
        return _check_explicit(layout, card, tuple(bands), raster_name, fix)
    matched = _match_by_name(layout, card)
    if matched is not None:
        return matched
    hint = ""
    if "palette" in layout.colorinterps:
        hint = " A paletted raster must be expanded first: gdal_translate -expand rgb."
    raise InvalidRasterError(
        f"Cannot match the bands of {raster_name} to the model: it has {layout.summary()}, the model expects "
        f"{card.num_bands} band{'s' if card.num_bands != 1 else ''} ({expected}); {fix}.{hint}"
    )


def _check_explicit(
    layout: BandLayout, card: ModelCard, bands: tuple[int, ...], raster_name: str, fix: str
) -> tuple[int, ...]:
    if len(bands) != card.num_bands:
        raise InvalidRasterError(
            f"{len(bands)} band{'s' if len(bands) != 1 else ''} {list(bands)} given but the model expects "
            f"{card.num_bands} ({', '.join(card.input_bands)}); {raster_name} has {layout.summary()}; {fix}."
        )
    bad = [b for b in bands if not 1 <= b <= layout.count]
    if bad:
        raise InvalidRasterError(
            f"Band number{'s' if len(bad) != 1 else ''} {bad} out of range: {raster_name} has {layout.summary()}, "
            f"numbered 1..{layout.count}; {fix}."
        )
    return bands


def _match_by_name(layout: BandLayout, card: ModelCard) -> tuple[int, ...] | None:
    """Match card band names to colour interpretations, then descriptions, then leftovers in order."""
    chosen: list[int | None] = []
    used: set[int] = set()
    for name in card.input_bands:
        index = _find_band(layout, name.lower(), used)
        chosen.append(index)
        if index is not None:
            used.add(index)
    missing = [i for i, index in enumerate(chosen) if index is None]
    if missing:
        leftovers = [b for b in range(1, layout.count + 1) if b not in used and layout.colorinterps[b - 1] != "alpha"]
        if len(leftovers) != len(missing):
            return None
        for position, band in zip(missing, leftovers, strict=True):
            chosen[position] = band
    return tuple(index for index in chosen if index is not None)


def _find_band(layout: BandLayout, name: str, used: set[int]) -> int | None:
    if name == "alpha":  # a card never gets the alpha band through matching: it is validity, not imagery
        return None
    for band, interp in enumerate(layout.colorinterps, start=1):
        if band not in used and interp == name and interp not in _ANONYMOUS_INTERPS:
            return band
    for band, desc in enumerate(layout.descriptions, start=1):
        if band not in used and desc.strip().lower() == name:
            return band
    return None


@dataclass(frozen=True)
class Normalizer:
    """Maps raw band values to the model's input: scale each band's ``[low, high]`` to [0, 1], then ``(x - mean) / std``.

    Attributes:
        low: Per-band raw value mapped to 0, in model band order.
        high: Per-band raw value mapped to 1.
        mean: Per-band mean.
        std: Per-band standard deviation.
        clip: Clip the scaled values to [0, 1] (for per-band ranges from the raster's own statistics).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: bool = False

    @classmethod
    def from_card(cls, card: ModelCard, ranges: Sequence[tuple[float, float]] | None = None) -> Normalizer:
        """The normaliser the card describes, or with per-band ``ranges`` (then clipped) instead of its value range."""
        if ranges is None:
            low, high = card.input_value_range
            return cls(
                low=(low,) * card.num_bands, high=(high,) * card.num_bands, mean=card.norm_mean, std=card.norm_std
            )
        return cls(
            low=tuple(float(r[0]) for r in ranges),
            high=tuple(float(r[1]) for r in ranges),
            mean=card.norm_mean,
            std=card.norm_std,
            clip=True,
        )

    def __call__(self, raw: NDArray[np.generic]) -> NDArray[np.float32]:
        """Normalise a (C, h, w) block of raw values (any numeric dtype) to float32."""
        # float32 is exact enough for 8/16-bit values; 32-bit integers and float64 data keep float64 until the end.
        work = (
            np.float64 if raw.dtype.itemsize > 4 or (raw.dtype.kind in "iu" and raw.dtype.itemsize > 2) else np.float32
        )
        low: NDArray[Any] = np.asarray(self.low, dtype=work)[:, None, None]
        scale: NDArray[Any] = (1.0 / (np.asarray(self.high, np.float64) - np.asarray(self.low, np.float64))).astype(
            work
        )[:, None, None]
        mean: NDArray[Any] = np.asarray(self.mean, dtype=work)[:, None, None]
        inv_std: NDArray[Any] = (1.0 / np.asarray(self.std, dtype=np.float64)).astype(work)[:, None, None]
        values: NDArray[Any] = np.asarray(raw, dtype=work)
        values = (values - low) * scale
        if self.clip:
            np.clip(values, 0.0, 1.0, out=values)
        return np.asarray((values - mean) * inv_std, dtype=np.float32)

    def raw_value_for_zero(self) -> tuple[float, ...]:
        """Raw value per band that normalises to 0 (the band mean), used to pad outside the raster."""
        return tuple(lo + m * (hi - lo) for lo, hi, m in zip(self.low, self.high, self.mean, strict=True))

"""Value scaling: which raw values of each band map to the model's 0 and 1.

``card`` (the default) scales every band by the card's ``input_value_range`` (0-255 for 8-bit models), as the
model was trained. ``minmax`` and ``percentile`` scale each band by its own range, for imagery whose values are
not the card's (16-bit, float reflectance, int16 with negatives), and clip to [0, 1]:

* ``minmax``: the band's minimum and maximum, from the statistics GDAL already stores for it
  (``STATISTICS_MINIMUM`` / ``STATISTICS_MAXIMUM``) or else from a sample of blocks;
* ``percentile``: the band's 2nd and 98th percentiles in a sample of blocks (robust to a few extreme values).

The sample is at most :data:`SAMPLE_WINDOWS_PER_AXIS` squared windows of :data:`SAMPLE_WINDOW_PX` pixels spread
evenly over the raster (the whole raster when it is smaller), valid pixels only; nothing is written beside the
input. Under ``card`` the same sample tells whether the values fit the card's range, and
:func:`card_range_advice` says which option fits when they do not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from ..errors import InvalidInputError
from ..model_card import ModelCard

__all__ = [
    "PERCENTILES",
    "VALUE_SCALINGS",
    "BandSample",
    "ValueScaling",
    "card_range_advice",
    "check_value_scaling",
    "describe_ranges",
    "sample_bands",
    "scaling_ranges",
    "stored_minmax",
]

ValueScaling = Literal["card", "minmax", "percentile"]
#: The value-scaling choices, default first.
VALUE_SCALINGS: tuple[str, ...] = get_args(ValueScaling)
#: Percentiles of ``percentile`` scaling.
PERCENTILES = (2.0, 98.0)
#: Windows per axis of the value sample.
SAMPLE_WINDOWS_PER_AXIS = 8
#: Edge of one sample window in pixels.
SAMPLE_WINDOW_PX = 128
#: Share of values outside the card's range above which ``card`` scaling is called wrong.
_OUTSIDE_SHARE = 0.01
#: Values spanning less than this share of the card's range look like another scale (reflectance 0-1 on 0-255).
_NARROW_SHARE = 0.1

ReadWindow = Callable[[Window], tuple[NDArray[Any], NDArray[np.bool_]]]


def check_value_scaling(mode: str) -> None:
    """Raise :class:`InvalidInputError` for an unknown value scaling (the message lists the choices)."""
    if mode not in VALUE_SCALINGS:
        raise InvalidInputError(f"Unknown value scaling '{mode}'; choose one of: {', '.join(VALUE_SCALINGS)}.")


@dataclass(frozen=True)
class BandSample:
    """Valid raw values sampled from each model band (model band order).

    Attributes:
        values: One 1-D array per band.
    """

    values: tuple[NDArray[Any], ...]

    @property
    def empty(self) -> bool:
        """Whether no valid pixel was sampled."""
        return not self.values or self.values[0].size == 0

    def percentiles(self, low: float, high: float) -> tuple[tuple[float, float], ...]:
        """Per band ``(low, high)`` percentiles."""
        return tuple((float(np.percentile(v, low)), float(np.percentile(v, high))) for v in self.values)

    def minmax(self) -> tuple[tuple[float, float], ...]:
        """Per band ``(min, max)``."""
        return tuple((float(v.min()), float(v.max())) for v in self.values)


def sample_windows(height: int, width: int) -> list[Window]:
    """At most :data:`SAMPLE_WINDOWS_PER_AXIS` squared windows spread evenly over the raster (all of a small one)."""

    def offsets(length: int) -> list[tuple[int, int]]:
        size = min(SAMPLE_WINDOW_PX, length)
        count = min(SAMPLE_WINDOWS_PER_AXIS, -(-length // size))
        if count == 1:
            return [(0, length if length <= SAMPLE_WINDOW_PX else size)]
        step = (length - size) / (count - 1)
        return [(round(i * step), size) for i in range(count)]

    return [Window(c, r, w, h) for r, h in offsets(height) for c, w in offsets(width)]


def sample_bands(read: ReadWindow, height: int, width: int, band_count: int) -> BandSample:
    """Valid raw values of every band in the sample windows.

    Args:
        read: Window -> ((C, h, w) raw values, (h, w) validity) inside the raster.
        height: Rows of the raster.
        width: Columns of the raster.
        band_count: C.
    """
    parts: list[list[NDArray[Any]]] = [[] for _ in range(band_count)]
    for window in sample_windows(height, width):
        data, valid = read(window)
        valid = valid & np.isfinite(data).all(axis=0)
        for band in range(band_count):
            parts[band].append(data[band][valid])
    return BandSample(tuple(np.concatenate(p) if p else np.empty(0) for p in parts))


def scaling_ranges(
    mode: str, sample: BandSample, stored_minmax: Sequence[tuple[float, float] | None]
) -> tuple[tuple[float, float], ...] | None:
    """Per band raw ``(low, high)`` mapped to 0 and 1, or None for ``card`` (and for an empty sample).

    Args:
        mode: A name from :data:`VALUE_SCALINGS`.
        sample: Valid values of every band.
        stored_minmax: Per band the (min, max) GDAL statistics already stored for it, None where there are none.
    """
    check_value_scaling(mode)
    if mode == "card":
        return None
    if mode == "minmax" and stored_minmax and all(s is not None for s in stored_minmax):
        ranges = tuple(s for s in stored_minmax if s is not None)
    elif sample.empty:
        return None
    elif mode == "minmax":
        ranges = sample.minmax()
    else:
        ranges = sample.percentiles(*PERCENTILES)
    # A constant band maps to 0 rather than dividing by zero.
    return tuple((low, high if high > low else low + 1.0) for low, high in ranges)


def stored_minmax(tags: Mapping[str, str]) -> tuple[float, float] | None:
    """The (min, max) of GDAL's stored band statistics (``STATISTICS_MINIMUM`` / ``_MAXIMUM``), None if absent."""
    try:
        return float(tags["STATISTICS_MINIMUM"]), float(tags["STATISTICS_MAXIMUM"])
    except (KeyError, ValueError):
        return None


def card_range_advice(raster_name: str, dtypes: Sequence[str], card: ModelCard, sample: BandSample) -> str | None:
    """Under ``card`` scaling: a warning when the sampled values do not fit the card's range, else None.

    Values of the card's own data type are taken as fitting; other types (16-bit, float, signed) are checked: a
    noticeable share outside the card's range (a 16-bit image on an 8-bit model, negatives), or values spanning a
    small part of it (reflectance 0-1 on an 8-bit model), get a warning naming the option that fits.
    """
    if set(dtypes) == {card.input_dtype} or sample.empty:
        return None
    values = np.concatenate([v.astype(np.float64, copy=False) for v in sample.values])
    low, high = card.input_value_range
    outside = float(np.mean((values < low) | (values > high)))
    p_low, p_high = (float(np.percentile(values, q)) for q in PERCENTILES)
    kind = "/".join(sorted(set(dtypes)))
    fix = (
        "Use VALUE_SCALING percentile (each band's 2-98 % range; VALUE_SCALING minmax for its full "
        "range) to scale the raster's own range to the model's"
    )
    if outside > _OUTSIDE_SHARE:
        return (
            f"{raster_name} holds {kind} values from {_num(values.min())} to {_num(values.max())}, {outside:.0%} of "
            f"them outside the {_num(low)}-{_num(high)} the model was trained on ({card.input_dtype}); scaled by "
            f"that range (value scaling card) the model sees values it never saw. {fix}."
        )
    if p_high - p_low < _NARROW_SHARE * (high - low):
        return (
            f"{raster_name} holds {kind} values mostly between {_num(p_low)} and {_num(p_high)} (2-98 %), a small part "
            f"of the {_num(low)}-{_num(high)} the model was trained on ({card.input_dtype}): scaled by that range "
            f"(value scaling card) the model sees an almost flat image. {fix}."
        )
    return None


def describe_ranges(mode: str, band_names: Sequence[str], ranges: Sequence[tuple[float, float]]) -> str:
    """One line naming each band's range, e.g. ``Value scaling percentile: red 12-3,870, ...``."""
    parts = ", ".join(f"{name} {_num(lo)}-{_num(hi)}" for name, (lo, hi) in zip(band_names, ranges, strict=True))
    what = "2-98 %" if mode == "percentile" else "min-max"
    return f"Value scaling {mode} ({what} of each band, mapped to the model's 0-1, clipped): {parts}."


def _num(value: float) -> str:
    value = float(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"

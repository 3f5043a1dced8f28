"""Named presets: a few options chosen together for a purpose, applied where the user did not choose.

* ``"fast"`` (the default): the card's tile size and overlap, no test-time augmentation, tiles from the raster's
  top-left pixel: one model call per tile.
* ``"quality"``: half the tile as overlap (every pixel seen by more tiles, far from their borders), flip
  test-time augmentation (identity, horizontal and vertical flip averaged) and the anchored tile grid (results do
  not depend on where the raster starts). Three views of about 2-3x the tiles: 6.7-8.6x the model calls of
  ``"fast"`` on the shift-stability benchmark's image; ``docs/engine.md`` gives its measured gain and cost.

An explicit option always wins over the preset: presets only fill what is left at its default.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

from ..errors import InvalidInputError
from ..model_card import ModelCard
from .request import SegmentationRequest

__all__ = ["PRESETS", "Preset", "apply_preset", "preset_options"]

Preset = Literal["fast", "quality"]
#: Names accepted by :func:`apply_preset` (``--preset`` on the command line).
PRESETS: tuple[str, ...] = get_args(Preset)


def preset_options(name: str, card: ModelCard, tile_size_px: int | None = None) -> dict[str, Any]:
    """The :class:`SegmentationRequest` fields a preset sets, for a model and tile size.

    Args:
        name: A name from :data:`PRESETS`.
        card: The model's card (its tile size is the default).
        tile_size_px: The tile size in use, if not the card's.

    Raises:
        InvalidInputError: If ``name`` is not a preset.
    """
    if name not in PRESETS:
        raise InvalidInputError(f"Unknown preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    if name == "fast":
        return {}
    tile = card.tile_size_px if tile_size_px is None else tile_size_px
    return {"overlap_px": tile // 2, "tta": "flip", "tile_grid": "anchored"}


def apply_preset(request: SegmentationRequest, card: ModelCard, name: str) -> SegmentationRequest:
    """``request`` with the preset's options wherever ``request`` still has the field's default.

    Raises:
        InvalidInputError: If ``name`` is not a preset.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(SegmentationRequest)}
    chosen = {
        key: value
        for key, value in preset_options(name, card, request.tile_size_px).items()
        if getattr(request, key) == defaults[key]
    }
    return dataclasses.replace(request, **chosen)

"""Presets: a few options chosen together, applied only where the request still has the default."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import InvalidInputError
from engine.inference.presets import PRESETS, apply_preset, preset_options
from engine.inference.request import SegmentationRequest
from tests.engine.tiny_assets import make_tiny_card


def test_quality_preset_sets_half_tile_overlap_flip_tta_and_the_anchored_grid() -> None:
    card = make_tiny_card(tile_size_px=64, overlap_px=8)
    assert PRESETS == ("fast", "quality")
    assert preset_options("fast", card) == {}
    assert preset_options("quality", card) == {"overlap_px": 32, "tta": "flip", "tile_grid": "anchored"}
    assert preset_options("quality", card, tile_size_px=128)["overlap_px"] == 64


def test_apply_preset_keeps_what_the_request_chose() -> None:
    card = make_tiny_card(tile_size_px=64, overlap_px=8)
    plain = SegmentationRequest(Path("in.tif"), Path("out.tif"))
    quality = apply_preset(plain, card, "quality")
    assert (quality.overlap_px, quality.tta, quality.tile_grid) == (32, "flip", "anchored")
    chosen = apply_preset(
        SegmentationRequest(Path("in.tif"), Path("out.tif"), overlap_px=12, tta="d4"), card, "quality"
    )
    assert (chosen.overlap_px, chosen.tta, chosen.tile_grid) == (12, "d4", "anchored")
    assert apply_preset(plain, card, "fast") == plain


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="fast, quality"):
        preset_options("best", make_tiny_card())


def test_unknown_tile_grid_and_heatmap_type_are_rejected_with_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="raster, anchored"):
        SegmentationRequest(Path("in.tif"), Path("out.tif"), tile_grid="world")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="uint16, uint8"):
        SegmentationRequest(Path("in.tif"), Path("out.tif"), heatmap_dtype="float32")  # type: ignore[arg-type]

"""Shared fixtures for the engine tests: tiny GeoTIFFs, a tiny model card, a tiny model as ONNX and checkpoint.

Fixtures (all data is generated in temp folders; nothing is committed):

* ``make_geotiff(data, name=..., crs=..., res_m=..., nodata=..., colorinterp=..., descriptions=...,
  internal_mask=..., georeferenced=..., transform=..., **profile) -> Path``: writes a (C, H, W) array of any dtype
  as a GeoTIFF with a real CRS (UTM 40N, Dubai) and a north-up transform at ``res_m`` metres.
* ``tiny_card``: a valid 3-class RGB :class:`~engine.model_card.ModelCard` (architecture ``"tiny_conv"``, tile 32,
  overlap 8, size divisor 1, no gsd).
* ``tiny_model_files`` (session): :class:`TinyModelFiles` with ``onnx_path`` (ONNX export with the card in its
  metadata), ``checkpoint_path`` (``{"state_dict", "model_card"}``), the ``card`` and the eval-mode torch
  ``module``. The net is a 3x3 conv + ReLU + 1x1 conv returning ``SegmentationOutput``; any H, W works.
* ``tiny_conv_registered``: makes ``engine.models.create_model("tiny_conv", ...)`` build that net (monkeypatched),
  so the torch backend can load ``checkpoint_path``.

Plain helpers live in ``tests/engine/tiny_assets.py`` (pytest runs with ``--import-mode=importlib``, so import them
as ``from tests.engine.tiny_assets import make_tiny_card, ...`` from the repository root): ``make_tiny_card(**changes)``
builds card variants; ``build_tiny_conv_net(num_classes, in_channels=3, hidden=8)`` builds the tiny net;
``TINY_CLASSES``, ``TINY_COLOURS``, ``UTM40N`` and ``ORIGIN`` (top-left corner of every fixture raster).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from engine.model_card import ModelCard
from tests.engine.tiny_assets import ORIGIN, UTM40N, MakeGeoTiff, TinyModelFiles, build_tiny_conv_net, make_tiny_card


@pytest.fixture
def tiny_card() -> ModelCard:
    return make_tiny_card()


@pytest.fixture
def make_geotiff(tmp_path: Path) -> MakeGeoTiff:
    """Factory writing a (C, H, W) array as a GeoTIFF in ``tmp_path``; see the module docstring."""

    def make(
        data: np.ndarray,
        name: str = "raster.tif",
        crs: str | None = UTM40N,
        res_m: float = 0.5,
        transform: Affine | None = None,
        nodata: float | None = None,
        colorinterp: Sequence[str] | None = None,
        descriptions: Sequence[str] | None = None,
        internal_mask: np.ndarray | None = None,
        georeferenced: bool = True,
        **profile: Any,
    ) -> Path:
        data = np.asarray(data)
        if data.ndim == 2:
            data = data[None]
        count, height, width = data.shape
        path = tmp_path / name
        kwargs: dict[str, Any] = {
            "driver": "GTiff", "count": count, "height": height, "width": width, "dtype": data.dtype.name,
        }  # fmt: skip
        if georeferenced:
            kwargs["crs"] = crs
            kwargs["transform"] = transform if transform is not None else from_origin(*ORIGIN, res_m, res_m)
        if nodata is not None:
            kwargs["nodata"] = nodata
        if colorinterp is not None:  # GDAL's RGB default would turn a 4th band into alpha whatever we set
            kwargs["photometric"] = "MINISBLACK"
        kwargs.update(profile)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **kwargs) as dst:
                dst.write(data)
                if colorinterp is not None:
                    dst.colorinterp = [ColorInterp[c] for c in colorinterp]
                if descriptions is not None:
                    for band, text in enumerate(descriptions, start=1):
                        dst.set_band_description(band, text)
                if internal_mask is not None:
                    dst.write_mask(np.where(internal_mask, 255, 0).astype(np.uint8))
        return path

    return make


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFiles:
    import onnx
    import torch

    from engine.model_card import embed_card

    folder = tmp_path_factory.mktemp("tiny_model")
    card = make_tiny_card()
    torch.manual_seed(0)
    module = build_tiny_conv_net(card.num_classes).eval()
    with torch.no_grad():  # larger weights than the default init: confident, distinct class scores
        for parameter in module.parameters():
            parameter.mul_(3.0)

    class LogitsOnly(torch.nn.Module):  # the ONNX graph returns the logits tensor itself
        def __init__(self) -> None:
            super().__init__()
            self.net = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).logits  # type: ignore[no-any-return]

    onnx_path = folder / "tiny.onnx"
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            LogitsOnly().eval(), (torch.zeros(1, 3, 16, 16),), str(onnx_path), input_names=["image"],
            output_names=["logits"], dynamic_axes={"image": dynamic, "logits": dynamic}, opset_version=17,
            dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(onnx_path))
    embed_card(proto, card)
    onnx.save(proto, str(onnx_path))
    checkpoint_path = folder / "tiny.pt"
    torch.save({"state_dict": module.state_dict(), "model_card": card.to_json()}, checkpoint_path)
    return TinyModelFiles(onnx_path=onnx_path, checkpoint_path=checkpoint_path, card=card, module=module)


@pytest.fixture
def tiny_conv_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import engine.models

    original = engine.models.create_model

    def create_model(name: str, num_classes: int, **options: Any) -> Any:
        if name == "tiny_conv":
            return build_tiny_conv_net(num_classes, **options)
        return original(name, num_classes=num_classes, **options)

    monkeypatch.setattr(engine.models, "create_model", create_model)
    yield

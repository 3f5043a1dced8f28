"""Model card: the self-description every model file carries, parsed once into a frozen dataclass.

The card is one JSON document with a ``schema_version``. It travels inside the model file:

* ONNX: under the ``metadata_props`` key :data:`ONNX_METADATA_KEY`, next to the Deepness-compatible keys
  (``model_type``, ``class_names``, ``resolution``, ``tile_size``, ``tiles_overlap``,
  ``standardization_mean``, ``standardization_std``) so that Deepness can run our models;
* torch checkpoints: under the dict key :data:`CHECKPOINT_KEY`.

Deepness segmentation models (no card, only Deepness keys) are read too, so models move both ways.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ModelCardError, ModelLoadError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ONNX_METADATA_KEY = "bicorseg_model_card"
CHECKPOINT_KEY = "model_card"
#: Label written where there is no class (nodata, masked, outside the extent); class indices are 0..K-1.
NODATA_CLASS = 255
#: File suffixes of torch checkpoints (everything else that is a model is ``.onnx``).
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt")

OutputActivation = Literal["logits", "probabilities"]
_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_INPUT_DTYPES = ("uint8", "uint16", "int16", "float32")


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to use a model's weights correctly.

    Attributes:
        name: Human-readable model name (e.g. ``"BiCoR-Seg default (Dubai aerial)"``).
        architecture: Registry name for :func:`engine.models.create_model` (e.g. ``"hi_resnet_small"``);
            ``"external"`` for ONNX models we did not build (e.g. Deepness models).
        class_names: Class names in class-index order (index 0..K-1).
        class_colors: ``#rrggbb`` colour per class, same order.
        architecture_args: Keyword arguments for ``create_model`` besides ``num_classes``.
        input_bands: Band names the model expects, in order (``red``, ``green``, ``blue``, ``nir``, ...).
        input_dtype: Data type of the imagery the model was trained on.
        input_value_range: Raw values mapped to 0 and 1 before normalisation (e.g. ``(0, 255)``).
        norm_mean: Per-band mean subtracted after scaling to [0, 1].
        norm_std: Per-band standard deviation divided after subtracting the mean.
        ignore_index: Label ignored in training, if any (never written to outputs).
        gsd_m: Ground sampling distance the model was trained at, in metres per pixel; None if unknown.
        tile_size_px: Default tile edge in pixels.
        overlap_px: Default overlap between neighbouring tiles in pixels.
        size_divisor_px: Tile edges must be multiples of this.
        output_activation: Whether the model outputs logits (softmax applied by the engine) or probabilities.
        version: Version of these weights.
        description: What the model is for.
        license: Licence of the weights.
        citation: Papers to cite.
        training_data: Data the weights were trained on.
        metrics: Validation metrics, e.g. ``{"val_miou": 0.7}``.
        weights_sha256: Checksum of the weights (informational; the engine also hashes the file it loads).
        base_model_sha256: SHA-256 of the model file these weights were fine-tuned from; empty when trained from
            scratch.
        schema_version: Version of this card schema.
    """

    name: str
    architecture: str
    class_names: tuple[str, ...]
    class_colors: tuple[str, ...]
    architecture_args: Mapping[str, Any] = field(default_factory=dict)
    input_bands: tuple[str, ...] = ("red", "green", "blue")
    input_dtype: str = "uint8"
    input_value_range: tuple[float, float] = (0.0, 255.0)
    norm_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    norm_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    ignore_index: int | None = None
    gsd_m: float | None = None
    tile_size_px: int = 512
    overlap_px: int = 64
    size_divisor_px: int = 32
    output_activation: OutputActivation = "logits"
    version: str = "1.0"
    description: str = ""
    license: str = ""
    citation: str = ""
    training_data: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    weights_sha256: str = ""
    base_model_sha256: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        """Validate every field; the message names the field and the fix."""
        _check(bool(self.name), "name", "must be a non-empty string")
        _check(bool(self.architecture), "architecture", "must name a model (see engine.models.list_models())")
        _check(len(self.class_names) >= 1, "class_names", "must list at least one class")
        _check(
            len(self.class_names) < NODATA_CLASS,
            "class_names",
            f"has {len(self.class_names)} classes; at most {NODATA_CLASS - 1} fit a UInt8 class raster",
        )
        _check(
            len(self.class_colors) == len(self.class_names),
            "class_colors",
            f"has {len(self.class_colors)} colours for {len(self.class_names)} classes; give one per class",
        )
        for colour in self.class_colors:
            _check(bool(_HEX_COLOUR.match(colour)), "class_colors", f"entry {colour!r} is not '#rrggbb'")
        n_bands = len(self.input_bands)
        _check(n_bands >= 1, "input_bands", "must list at least one band")
        _check(len(self.norm_mean) == n_bands, "norm_mean", f"needs {n_bands} values, one per input band")
        _check(len(self.norm_std) == n_bands, "norm_std", f"needs {n_bands} values, one per input band")
        _check(all(s > 0 for s in self.norm_std), "norm_std", "values must be positive")
        _check(self.input_dtype in _INPUT_DTYPES, "input_dtype", f"must be one of {', '.join(_INPUT_DTYPES)}")
        low, high = self.input_value_range
        _check(high > low, "input_value_range", f"needs low < high, got ({low}, {high})")
        _check(self.size_divisor_px >= 1, "size_divisor_px", "must be a positive integer")
        _check(self.tile_size_px > 0, "tile_size_px", "must be a positive integer")
        _check(
            self.tile_size_px % self.size_divisor_px == 0,
            "tile_size_px",
            f"{self.tile_size_px} is not a multiple of size_divisor_px={self.size_divisor_px}",
        )
        _check(
            0 <= self.overlap_px < self.tile_size_px,
            "overlap_px",
            f"must be in [0, tile_size_px={self.tile_size_px}), got {self.overlap_px}",
        )
        _check(self.gsd_m is None or self.gsd_m > 0, "gsd_m", "must be positive metres per pixel, or null")
        _check(
            self.output_activation in ("logits", "probabilities"),
            "output_activation",
            "must be 'logits' or 'probabilities'",
        )
        _check(
            self.schema_version <= SCHEMA_VERSION,
            "schema_version",
            f"is {self.schema_version} but this version reads up to {SCHEMA_VERSION}; update the plugin",
        )

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.class_names)

    @property
    def num_bands(self) -> int:
        """Number of input bands the model expects."""
        return len(self.input_bands)

    def replace(self, **changes: Any) -> ModelCard:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        out = dataclasses.asdict(self)
        out["architecture_args"] = dict(self.architecture_args)
        out["metrics"] = dict(self.metrics)
        return out

    def to_json(self) -> str:
        """Serialise to the card's JSON document."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Parse a card dict; a missing or invalid field raises :class:`ModelCardError` naming it."""
        if not isinstance(data, Mapping):
            raise ModelCardError(f"Model card must be a JSON object, got {type(data).__name__}.")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for required in ("name", "architecture", "class_names", "class_colors"):
            if required not in data:
                raise ModelCardError(f"Model card field '{required}' is missing; add it to the card.")
        unknown = sorted(set(data) - set(known))
        if unknown:
            logger.warning("Ignoring unknown model card fields: %s", ", ".join(unknown))
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                continue
            kwargs[key] = _coerce(key, value)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ModelCardError(f"Model card is invalid: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse the card's JSON document."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"Model card is not valid JSON ({exc}); re-export the model.") from exc
        return cls.from_dict(data)

    def deepness_metadata(self) -> dict[str, str]:
        """Deepness-compatible ONNX metadata keys (values JSON-encoded, as Deepness reads them)."""
        props: dict[str, Any] = {
            "model_type": "Segmentor",
            "class_names": {str(i): name for i, name in enumerate(self.class_names)},
            "tile_size": self.tile_size_px,
            "tiles_overlap": round(100.0 * self.overlap_px / self.tile_size_px),
            "standardization_mean": list(self.norm_mean),
            "standardization_std": list(self.norm_std),
        }
        if self.gsd_m is not None:
            props["resolution"] = self.gsd_m * 100.0  # Deepness stores centimetres per pixel.
        return {key: json.dumps(value) for key, value in props.items()}


_TUPLE_FIELDS = {"class_names", "class_colors", "input_bands", "input_value_range", "norm_mean", "norm_std"}
_FLOAT_TUPLE_FIELDS = {"input_value_range", "norm_mean", "norm_std"}


def _check(ok: bool, field_name: str, problem: str) -> None:
    if not ok:
        raise ModelCardError(f"Model card field '{field_name}' {problem}.")


def _coerce(key: str, value: Any) -> Any:
    """Turn JSON values into the dataclass field types, naming the field when that fails."""
    try:
        if key in _FLOAT_TUPLE_FIELDS:
            return tuple(float(v) for v in value)
        if key in _TUPLE_FIELDS:
            if isinstance(value, str):
                raise TypeError("expected a list, got a string")
            return tuple(str(v) for v in value)
        if key in ("tile_size_px", "overlap_px", "size_divisor_px", "schema_version"):
            if isinstance(value, bool) or int(value) != float(value):
                raise TypeError(f"expected an integer, got {value!r}")
            return int(value)
        if key == "ignore_index":
            return None if value is None else int(value)
        if key == "gsd_m":
            return None if value is None else float(value)
        if key in ("architecture_args", "metrics"):
            if not isinstance(value, Mapping):
                raise TypeError("expected an object")
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise ModelCardError(f"Model card field '{key}' has an invalid value: {exc}.") from exc
    return value


# --- Deepness interoperability -------------------------------------------------------------------------

_DEEPNESS_PALETTE = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
    "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
)  # fmt: skip


def _json_or_raw(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def card_from_deepness_metadata(props: Mapping[str, str], name: str, num_bands: int = 3) -> ModelCard:
    """Build a card from a Deepness segmentation model's ONNX metadata.

    Deepness feeds ``image / 255`` standardised by the mean/std keys and its segmentation models output
    per-class probabilities, so the card says ``output_activation="probabilities"``.

    Args:
        props: The ONNX ``metadata_props`` as a str -> str mapping.
        name: Name for the card (usually the file name).
        num_bands: Number of input channels of the ONNX model.

    Raises:
        ModelCardError: If the metadata is not a Deepness segmentation model.
    """
    model_type = str(_json_or_raw(props.get("model_type", '""')))
    if model_type and model_type.lower() not in ("segmentor", "segmentation"):
        raise ModelCardError(
            f"Deepness model type '{model_type}' is not supported; only segmentation ('Segmentor') models run here."
        )
    raw_names = _json_or_raw(props["class_names"]) if "class_names" in props else None
    if isinstance(raw_names, Mapping):
        class_names = tuple(str(raw_names[k]) for k in sorted(raw_names, key=lambda k: int(k)))
    elif isinstance(raw_names, list):
        class_names = tuple(str(n) for n in raw_names)
    else:
        raise ModelCardError(
            "Model has neither a BiCoR-Seg model card nor Deepness 'class_names' metadata; "
            "export it with `python -m training.export` or add a card."
        )
    tile = int(_json_or_raw(props.get("tile_size", "512")))
    overlap_pct = float(_json_or_raw(props.get("tiles_overlap", "15")))
    mean = _json_or_raw(props.get("standardization_mean", json.dumps([0.0] * num_bands)))
    std = _json_or_raw(props.get("standardization_std", json.dumps([1.0] * num_bands)))
    resolution_cm = props.get("resolution")
    band_names = (
        ("red", "green", "blue", "alpha")[:num_bands]
        if num_bands <= 4
        else tuple(f"band{i + 1}" for i in range(num_bands))
    )
    return ModelCard.from_dict(
        {
            "name": name,
            "architecture": "external",
            "class_names": class_names,
            "class_colors": [_DEEPNESS_PALETTE[i % len(_DEEPNESS_PALETTE)] for i in range(len(class_names))],
            "input_bands": band_names,
            "norm_mean": [float(v) for v in mean][:num_bands],
            "norm_std": [float(v) for v in std][:num_bands],
            "tile_size_px": tile,
            "overlap_px": round(tile * overlap_pct / 100.0),
            "size_divisor_px": 1,
            "gsd_m": None if resolution_cm is None else float(_json_or_raw(resolution_cm)) / 100.0,
            "output_activation": "probabilities",
            "description": "Deepness segmentation model (card derived from its ONNX metadata).",
        }
    )


# --- Reading and writing cards in model files --------------------------------------------------------------


def onnx_metadata_props(card: ModelCard) -> dict[str, str]:
    """All metadata_props to write into an ONNX model: our card plus the Deepness keys."""
    props = card.deepness_metadata()
    props[ONNX_METADATA_KEY] = card.to_json()
    return props


def card_from_onnx_metadata(props: Mapping[str, str], name: str, num_bands: int = 3) -> ModelCard:
    """Parse the card from ONNX metadata, falling back to Deepness keys."""
    if ONNX_METADATA_KEY in props:
        return ModelCard.from_json(props[ONNX_METADATA_KEY])
    return card_from_deepness_metadata(props, name=name, num_bands=num_bands)


def embed_card(proto: Any, card: ModelCard) -> None:
    """Write ``card`` (and the Deepness keys) into an ``onnx.ModelProto``'s ``metadata_props``, replacing old ones.

    The one card writer: every export, quantised copy and test model gets its metadata from here.
    """
    del proto.metadata_props[:]
    for key, value in onnx_metadata_props(card).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_card(path: str | Path) -> ModelCard:
    """Read the model card carried by a ``.onnx`` file or a torch checkpoint (``.pt``, ``.pth``, ``.ckpt``).

    A convenience for callers that need only the card; a segmentation run opens the file once as a
    :class:`~engine.model_file.ModelFile` instead.

    Raises:
        ModelLoadError: If the file is missing or not a model.
        ModelCardError: If the model carries no valid card.
    """
    from .model_file import ModelFile

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Model file '{path}' does not exist; check the path or leave MODEL empty.")
    return ModelFile.open(path).card


def load_checkpoint(path: Path) -> Mapping[str, Any]:
    """Load a torch checkpoint dict safely (``weights_only``), mapping failures to :class:`ModelLoadError`."""
    from .model_file import read_checkpoint

    return read_checkpoint(Path(path))


def card_from_checkpoint(checkpoint: Mapping[str, Any], path: Path | str = "checkpoint") -> ModelCard:
    """Parse the card stored under :data:`CHECKPOINT_KEY` in a checkpoint dict."""
    raw = checkpoint.get(CHECKPOINT_KEY)
    if raw is None:
        raise ModelCardError(
            f"Torch checkpoint '{path}' carries no '{CHECKPOINT_KEY}'; save it with training.checkpoints "
            "or export it with `python -m training.export`."
        )
    return ModelCard.from_json(raw) if isinstance(raw, str) else ModelCard.from_dict(raw)

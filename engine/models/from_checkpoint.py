"""The one way a checkpoint becomes a model: build the card's architecture and load its weights strictly.

The torch backend, the plugin's and the training package's ONNX export, and training's own checkpoint loading
all call :func:`model_from_checkpoint`, so a checkpoint that loads in one place loads the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError
from ..model_card import ModelCard
from .base import strip_wrapper_prefixes

if TYPE_CHECKING:
    from torch import nn

__all__ = ["TRAINING_WRAPPER_PREFIXES", "build_model", "model_from_checkpoint"]

#: Key prefixes that training wrappers add to every weight: DataParallel / DistributedDataParallel.
TRAINING_WRAPPER_PREFIXES: tuple[str, ...] = ("module.",)


def model_from_checkpoint(checkpoint: Mapping[str, Any], card: ModelCard, source: str = "checkpoint") -> nn.Module:
    """Build the architecture ``card`` names and load the checkpoint's ``state_dict`` into it, in eval mode, on CPU.

    Args:
        checkpoint: A checkpoint dict ``{"state_dict": ..., "model_card": ...}``.
        card: The card parsed from it (architecture, its arguments, classes, bands).
        source: How to name the checkpoint in messages (usually the file name).

    Raises:
        ModelLoadError: If there is no ``state_dict``, the architecture cannot be built, its input channels do not
            match the card, or the weights do not fit; each message says what to fix.
    """
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, Mapping):
        raise ModelLoadError(
            f"Checkpoint '{source}' has no 'state_dict'; save {{'state_dict': ..., 'model_card': ...}} "
            "(training.checkpoints does)."
        )
    model = build_model(card, source)
    weights = strip_wrapper_prefixes(state_dict, TRAINING_WRAPPER_PREFIXES)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"The weights in '{source}' do not fit architecture '{card.architecture}' with "
            f"{dict(card.architecture_args)}: {str(exc).splitlines()[0]}... Check the card's architecture_args."
        ) from exc
    model.eval()
    result: nn.Module = model
    return result


def build_model(card: ModelCard, source: str = "model") -> nn.Module:
    """The architecture ``card`` names, with the card's class count and arguments, freshly initialised.

    Raises:
        ModelLoadError: If the card names an external model or an architecture this engine cannot build, or the
            model's input channels do not match the card's bands.
    """
    from . import create_model  # registry lookup at call time (tests register tiny architectures)

    if card.architecture == "external":
        raise ModelLoadError(
            f"'{source}' describes an external model (architecture 'external'), which engine.models "
            "cannot build; run its ONNX export instead."
        )
    try:
        model = create_model(card.architecture, num_classes=card.num_classes, **dict(card.architecture_args))
    except (KeyError, TypeError, ValueError) as exc:
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ModelLoadError(
            f"Cannot build architecture '{card.architecture}' from the card of '{source}' ({detail}); the card's "
            "architecture must be one of engine.models.list_models()."
        ) from exc
    in_channels = getattr(model, "in_channels", card.num_bands)
    if in_channels != card.num_bands:
        raise ModelLoadError(
            f"Model '{source}' takes {in_channels} input channels but its card lists {card.num_bands} input bands "
            f"({', '.join(card.input_bands)}); fix the card."
        )
    result: nn.Module = model
    return result

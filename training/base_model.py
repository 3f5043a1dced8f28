"""The model a fine-tune starts from: its file, card and weights, and how they go into a model for other classes.

A base model is any model file the engine runs: a torch checkpoint (its ``state_dict``) or an ``.onnx`` export of an
engine architecture, including the embedded default model, whose torch weights are rebuilt from the ONNX graph by
:func:`engine.models.from_onnx.model_from_onnx` (no torch checkpoint of it ships: it would not fit the plugin zip).

:func:`transfer_weights` copies every weight into the new model. Weights whose shape depends on the number of
classes (BiCoR-Seg's class embeddings, Hi-ResNet's classifier convolutions) are copied row by row for the classes
the base model also has (matched by name, case-insensitively); classes it does not have start from the
architecture's initialisation. The encoder and the rest of the decoder keep their weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.errors import InvalidInputError
from engine.model_card import ModelCard
from engine.model_file import ModelFile
from engine.models.from_checkpoint import build_model, model_from_checkpoint
from engine.models.from_onnx import model_from_onnx

__all__ = ["BaseModel", "WeightTransfer", "open_base_model", "transfer_weights"]

logger = logging.getLogger(__name__)

#: Training-only weights that an ONNX graph does not carry, and the inference weight each one starts from instead of
#: random values: BiCoR-Seg's auxiliary classifier maps the initial class embeddings exactly as its classifier maps the
#: refined ones, and a random one would send random gradients through the shared upsampler and encoder.
TRAINING_ONLY_TWINS: dict[str, str] = {"aux_classifier.weight": "classifier.weight"}


@dataclass(frozen=True)
class BaseModel:
    """A model file opened as the start of a fine-tune.

    Attributes:
        path: The model file.
        card: Its model card.
        sha256: SHA-256 of the file (written into the fine-tuned model's card).
        state_dict: Its weights as a torch state dict on the CPU.
        note: How the weights were read (for the log).
        untrained: Weights the file does not carry (training-only heads missing from an ONNX graph).
    """

    path: Path
    card: ModelCard
    sha256: str
    state_dict: Mapping[str, Tensor]
    note: str
    untrained: tuple[str, ...] = ()


def open_base_model(model: str | Path | ModelFile | None) -> BaseModel:
    """Open BASE_MODEL (None or empty: the embedded default model) and read its torch weights.

    Raises:
        ModelLoadError: If the file is not a model this engine can build (external ONNX, int8, unknown layout);
            the message says what to give instead.
    """
    model_file = model if isinstance(model, ModelFile) else ModelFile.open(model)
    card = model_file.card
    if card.architecture == "external":
        raise InvalidInputError(
            f"BASE_MODEL '{model_file.path.name}' is an external ONNX model (no engine architecture in its card), "
            "which cannot be trained further here; choose a model made by this plugin, or train from scratch with "
            "ARCHITECTURE."
        )
    untrained: tuple[str, ...] = ()
    if model_file.kind == "torch":
        module = model_from_checkpoint(model_file.checkpoint, card, model_file.path.name)
        note = f"torch checkpoint {model_file.path.name}"
    else:
        module, recovery = model_from_onnx(model_file.path, card)
        untrained = recovery.not_in_graph
        note = (
            f"weights rebuilt from the ONNX graph of {model_file.path.name} ({len(recovery.recovered)} tensors, "
            f"logits within {recovery.max_abs_diff:.1e} of the file"
            + (f"; {', '.join(recovery.not_in_graph)} not in the graph" if recovery.not_in_graph else "")
            + ")"
        )
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    for key in untrained:
        twin = TRAINING_ONLY_TWINS.get(key)
        if twin in state and state[twin].shape == state[key].shape:
            state[key] = state[twin].clone()
            note += f"; {key} starts as a copy of {twin}"
    return BaseModel(model_file.path, card, model_file.sha256, state, note, untrained)


@dataclass(frozen=True)
class WeightTransfer:
    """What :func:`transfer_weights` did.

    Attributes:
        kept_classes: Classes whose classifier rows came from the base model.
        new_classes: Classes that start from the architecture's initialisation.
        copied: Number of weights copied whole.
        class_weights: Weights that depend on the class count, copied row by row.
    """

    kept_classes: tuple[str, ...]
    new_classes: tuple[str, ...]
    copied: int
    class_weights: tuple[str, ...]

    def summary(self) -> str:
        """One line for the log."""
        if not self.new_classes:
            return f"All {len(self.kept_classes)} classes are the base model's: every weight starts from it."
        kept = ", ".join(self.kept_classes) or "none"
        return (
            f"The classifier is replaced for the new classes ({', '.join(self.new_classes)}); classes kept from the "
            f"base model: {kept}; the encoder and decoder keep their weights ({self.copied} tensors)."
        )


def class_dimensions(card: ModelCard, num_classes: int) -> dict[str, int]:
    """State-dict key -> dimension that counts the classes, for the card's architecture (built twice to compare)."""
    one = build_model(card.replace(class_names=_names(num_classes), class_colors=("#000000",) * num_classes))
    two = build_model(card.replace(class_names=_names(num_classes + 1), class_colors=("#000000",) * (num_classes + 1)))
    dims: dict[str, int] = {}
    second = two.state_dict()
    for key, tensor in one.state_dict().items():
        other = second[key]
        if tensor.shape != other.shape:
            changed = [d for d, (a, b) in enumerate(zip(tensor.shape, other.shape, strict=True)) if a != b]
            dims[key] = changed[0]
    return dims


def _names(count: int) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(count))


def transfer_weights(model: nn.Module, base: BaseModel, class_names: Sequence[str]) -> WeightTransfer:
    """Load the base model's weights into ``model`` (same architecture and arguments, ``class_names`` classes).

    Raises:
        InvalidInputError: If a weight that does not depend on the classes has another shape (different
            architecture arguments).
    """
    dims = class_dimensions(base.card, len(class_names))
    base_index = {name.casefold(): i for i, name in enumerate(base.card.class_names)}
    mapping = [(i, base_index.get(name.casefold())) for i, name in enumerate(class_names)]
    state = model.state_dict()
    copied = 0
    for key, target in state.items():
        if key not in base.state_dict:
            raise InvalidInputError(f"The base model has no weight '{key}'; it is not a {base.card.architecture}.")
        source = base.state_dict[key]
        if key in dims:
            dim = dims[key]
            with torch.no_grad():
                for new, old in mapping:
                    if old is not None:
                        target.select(dim, new).copy_(source.select(dim, old))
            continue
        if source.shape != target.shape:
            raise InvalidInputError(
                f"Weight '{key}' of the base model has shape {tuple(source.shape)}, the new model's "
                f"{tuple(target.shape)}; fine-tune with the base model's own architecture arguments."
            )
        with torch.no_grad():
            target.copy_(source)
        copied += 1
    model.load_state_dict(state, strict=True)
    return WeightTransfer(
        kept_classes=tuple(class_names[i] for i, old in mapping if old is not None),
        new_classes=tuple(class_names[i] for i, old in mapping if old is None),
        copied=copied,
        class_weights=tuple(sorted(dims)),
    )

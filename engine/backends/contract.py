"""The inference backend contract: the protocol, the accepted names, and the input/output checks every backend makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError, ModelLoadError, OutOfMemoryError

BackendName = Literal["onnxruntime", "torch"]
DeviceName = Literal["cpu", "cuda"]
#: What a user may ask for: a backend / device, or ``auto`` to let the engine choose (and say why).
BackendOption = Literal["auto", "onnxruntime", "torch"]
DeviceOption = Literal["auto", "cpu", "cuda"]

#: Backend names accepted by :func:`engine.backends.load_backend` (besides ``"auto"``).
BACKENDS: tuple[str, ...] = ("onnxruntime", "torch")
#: Device names accepted by :func:`engine.backends.load_backend` (besides ``"auto"``).
DEVICES: tuple[str, ...] = ("cpu", "cuda")


@runtime_checkable
class InferenceBackend(Protocol):
    """Runs a model on batches of normalised tiles.

    Attributes:
        name: ``"onnxruntime"`` or ``"torch"``.
        device: ``"cpu"`` or ``"cuda"``.
        device_reason: Why this device was chosen (e.g. ``"CUDA not available: torch built without CUDA"``).
    """

    name: str
    device: str
    device_reason: str

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """(B, C, H, W) normalised tiles -> (B, K, H, W) class probabilities."""
        ...


class TensorShapes(Protocol):
    """What a backend checks its model's tensors against: a :class:`~engine.model_card.ModelCard` is one.

    With ``output_activation`` ``"logits"`` the backend applies the softmax; with ``"probabilities"`` it does not.
    """

    @property
    def num_bands(self) -> int:
        """Input channels C."""
        ...

    @property
    def num_classes(self) -> int:
        """Output classes K."""
        ...

    @property
    def input_bands(self) -> tuple[str, ...]:
        """Band names, for messages."""
        ...

    @property
    def output_activation(self) -> str:
        """``logits`` or ``probabilities``."""
        ...


def check_batch(batch: NDArray[np.float32], card: TensorShapes) -> NDArray[np.float32]:
    """Validate a (B, C, H, W) batch against the card and return it as contiguous float32."""
    if batch.ndim != 4 or batch.shape[1] != card.num_bands:
        raise InvalidInputError(
            f"Batch of shape {batch.shape} does not fit the model: expected (B, {card.num_bands}, H, W) for bands "
            f"({', '.join(card.input_bands)})."
        )
    return np.ascontiguousarray(batch, dtype=np.float32)


def check_output(output: Any, batch_shape: tuple[int, ...], card: TensorShapes, path: Path) -> None:
    """Check a model output is (B, K, H, W) for the card's K classes."""
    b, _, h, w = batch_shape
    if output.shape != (b, card.num_classes, h, w):
        raise ModelLoadError(
            f"Model '{path.name}' returned shape {tuple(output.shape)} for input {batch_shape}; expected "
            f"({b}, {card.num_classes}, {h}, {w}) for the card's {card.num_classes} classes. Fix the card's class list "
            "or re-export the model."
        )


def check_choice(value: str, choices: tuple[str, ...], what: str, option: str) -> str:
    """Normalise a user choice (``"auto"`` or one of ``choices``), naming the option in the error."""
    normalised = (value or "auto").strip().lower()
    if normalised != "auto" and normalised not in choices:
        raise InvalidInputError(f"Unknown {what} '{value}'; choose auto, {', '.join(choices)} ({option}).")
    return normalised


#: Phrases of the runtimes' allocation failures: onnxruntime ("Failed to allocate memory for requested buffer of
#: size ..."), torch on CPU ("DefaultCPUAllocator: can't allocate memory") and on CUDA ("CUDA out of memory").
_ALLOCATION_FAILURES = ("failed to allocate memory", "can't allocate memory", "out of memory")


def allocation_failure(exc: BaseException, backend: str) -> OutOfMemoryError | None:
    """The engine's out-of-memory error for a model call that failed to allocate, or None for other failures.

    Both runtimes raise plain ``RuntimeError``-like exceptions (with a C++ stack in the message) when memory runs
    out; the user needs one line saying to lower BATCH_SIZE or TILE_SIZE.
    """
    if isinstance(exc, OutOfMemoryError):
        return exc
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or any(phrase in text for phrase in _ALLOCATION_FAILURES):
        return OutOfMemoryError(f"{backend} could not allocate memory for the model")
    return None

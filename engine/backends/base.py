"""The inference backend contract and the helpers every backend shares (softmax, thread counts, checks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError, ModelLoadError
from ..model_card import ModelCard

BackendName = Literal["onnxruntime", "torch"]
DeviceName = Literal["cpu", "cuda"]

#: Backend names accepted by :func:`engine.backends.load_backend` (besides ``"auto"``).
BACKENDS: tuple[str, ...] = ("onnxruntime", "torch")
#: Device names accepted by :func:`engine.backends.load_backend` (besides ``"auto"``).
DEVICES: tuple[str, ...] = ("cpu", "cuda")
#: File suffixes of torch checkpoints.
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt")


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


def softmax(logits: NDArray[np.floating[Any]], axis: int = 1) -> NDArray[np.float32]:
    """Numerically stable softmax in float32 (the maximum is subtracted before ``exp``)."""
    x = np.asarray(logits, dtype=np.float32)
    shifted = x - x.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    result: NDArray[np.float32] = shifted
    return result


def to_probabilities(output: NDArray[np.floating[Any]], card: ModelCard) -> NDArray[np.float32]:
    """Model output -> class probabilities: softmax unless the card says the model outputs probabilities."""
    if card.output_activation == "probabilities":
        return np.asarray(output, dtype=np.float32)
    return softmax(output, axis=1)


def check_batch(batch: NDArray[np.float32], card: ModelCard) -> NDArray[np.float32]:
    """Validate a (B, C, H, W) batch against the card and return it as contiguous float32."""
    if batch.ndim != 4 or batch.shape[1] != card.num_bands:
        raise InvalidInputError(
            f"Batch of shape {batch.shape} does not fit the model: expected (B, {card.num_bands}, H, W) for bands "
            f"({', '.join(card.input_bands)})."
        )
    return np.ascontiguousarray(batch, dtype=np.float32)


def check_output(output: NDArray[np.floating[Any]], batch_shape: tuple[int, ...], card: ModelCard, path: Path) -> None:
    """Check a model output is (B, K, H, W) for the card's K classes."""
    b, _, h, w = batch_shape
    if output.shape != (b, card.num_classes, h, w):
        raise ModelLoadError(
            f"Model '{path.name}' returned shape {tuple(output.shape)} for input {batch_shape}; expected "
            f"({b}, {card.num_classes}, {h}, {w}) for the card's {card.num_classes} classes. Fix the card's class list "
            "or re-export the model."
        )


def physical_core_count() -> int:
    """Physical CPU cores available to this process (hyper-threads counted once).

    Linux: distinct ``core_cpus_list`` (``thread_siblings_list`` on old kernels) among the CPUs this process may
    run on; elsewhere, or if that fails, the logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores: set[str] = set()
    topology = Path("/sys/devices/system/cpu")
    for cpu in cpus:
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topology / f"cpu{cpu}" / "topology" / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            return max(1, len(cpus))
    return max(1, len(cores))


def check_choice(value: str, choices: tuple[str, ...], what: str, option: str) -> str:
    """Normalise a user choice (``"auto"`` or one of ``choices``), naming the option in the error."""
    normalised = (value or "auto").strip().lower()
    if normalised != "auto" and normalised not in choices:
        raise InvalidInputError(f"Unknown {what} '{value}'; choose auto, {', '.join(choices)} ({option}).")
    return normalised

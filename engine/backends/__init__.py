"""Inference backends (ONNX Runtime, PyTorch), device selection, diagnostics and the default model.

Nothing here imports torch or onnxruntime at module level: a missing library surfaces as a
:class:`~engine.errors.BackendUnavailableError` saying what to install, when a backend is actually loaded.
"""

from __future__ import annotations

from pathlib import Path

from ..default_model import DEFAULT_MODEL_PATH, resolve_model_path
from ..errors import InvalidInputError, ModelLoadError
from ..model_card import ModelCard
from .base import BACKENDS, CHECKPOINT_SUFFIXES, DEVICES, InferenceBackend, check_choice, softmax
from .devices import diagnose

__all__ = [
    "DEFAULT_MODEL_PATH",
    "InferenceBackend",
    "diagnose",
    "load_backend",
    "resolve_model_path",
    "select_backend_name",
    "softmax",
]


def select_backend_name(model_path: Path, backend: str = "auto") -> str:
    """The backend for a model file: ``.onnx`` -> onnxruntime, checkpoints -> torch.

    Raises:
        InvalidInputError: If the backend name is unknown or cannot run this kind of file (the message says how).
        ModelLoadError: If the file extension is not a known model format.
    """
    choice = check_choice(backend, BACKENDS, "backend", "BACKEND / --backend")
    suffix = Path(model_path).suffix.lower()
    if suffix == ".onnx":
        if choice == "torch":
            raise InvalidInputError(
                f"BACKEND torch cannot run the ONNX model '{Path(model_path).name}'; choose BACKEND onnxruntime "
                "(or auto), or give the torch checkpoint."
            )
        return "onnxruntime"
    if suffix in CHECKPOINT_SUFFIXES:
        if choice == "onnxruntime":
            raise InvalidInputError(
                f"BACKEND onnxruntime cannot run the torch checkpoint '{Path(model_path).name}'; export it to ONNX "
                "first (`python -m training.export` or the bicorseg:exportmodel algorithm), or choose BACKEND torch."
            )
        return "torch"
    raise ModelLoadError(
        f"Model file '{Path(model_path).name}' has an unknown extension '{suffix}'; use .onnx or a torch checkpoint "
        f"({', '.join(CHECKPOINT_SUFFIXES)})."
    )


def load_backend(
    model_path: Path,
    card: ModelCard,
    backend: str = "auto",
    device: str = "auto",
    num_threads: int | None = None,
) -> InferenceBackend:
    """Load a model for inference.

    Args:
        model_path: ``.onnx`` model or torch checkpoint.
        card: The model's card (read it with :func:`engine.model_card.read_card`).
        backend: ``"auto"`` (by file type), ``"onnxruntime"`` or ``"torch"``.
        device: ``"auto"`` (CUDA when usable, with the reason recorded in ``device_reason``), ``"cpu"`` or
            ``"cuda"``.
        num_threads: CPU threads for inference; default: the physical core count (onnxruntime) or torch's own.

    Raises:
        InvalidInputError: For an unknown backend/device or a backend that cannot run this file type.
        BackendUnavailableError: If the library is missing (the message says what to install) or CUDA is
            requested but not usable (the message says why).
        ModelLoadError: If the model cannot be loaded or does not match its card.
    """
    device_choice = check_choice(device, DEVICES, "device", "DEVICE / --device")
    name = select_backend_name(model_path, backend)
    if name == "onnxruntime":
        from .onnx_backend import OnnxBackend

        return OnnxBackend(Path(model_path), card, device=device_choice, num_threads=num_threads)
    from .torch_backend import TorchBackend

    return TorchBackend(Path(model_path), card, device=device_choice, num_threads=num_threads)

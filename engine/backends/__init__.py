"""Inference backends (ONNX Runtime, PyTorch), device selection, diagnostics and the default model.

Nothing here imports torch or onnxruntime at module level: a missing library surfaces as a
:class:`~engine.errors.BackendUnavailableError` saying what to install, when a backend is actually loaded.
"""

from __future__ import annotations

from ..default_model import DEFAULT_MODEL_PATH, resolve_model_path
from ..errors import InvalidInputError
from ..model_file import ModelFile
from .contract import BACKENDS, DEVICES, InferenceBackend, check_choice
from .devices import diagnose
from .probabilities import softmax

__all__ = [
    "DEFAULT_MODEL_PATH",
    "InferenceBackend",
    "diagnose",
    "load_backend",
    "resolve_model_path",
    "select_backend_name",
    "softmax",
]


def select_backend_name(model: ModelFile, backend: str = "auto") -> str:
    """The backend for a model file: ``.onnx`` -> onnxruntime, checkpoints -> torch.

    Raises:
        InvalidInputError: If the backend name is unknown or cannot run this kind of file (the message says how).
    """
    choice = check_choice(backend, BACKENDS, "backend", "BACKEND")
    if model.kind == "onnx":
        if choice == "torch":
            raise InvalidInputError(
                f"BACKEND torch cannot run the ONNX model '{model.path.name}'; choose BACKEND onnxruntime "
                "(or auto), or give the torch checkpoint."
            )
        return "onnxruntime"
    if choice == "onnxruntime":
        raise InvalidInputError(
            f"BACKEND onnxruntime cannot run the torch checkpoint '{model.path.name}'; export it to ONNX "
            "first (`python -m training.export` or the bicorseg:exportmodel algorithm), or choose BACKEND torch."
        )
    return "torch"


def load_backend(
    model: ModelFile,
    backend: str = "auto",
    device: str = "auto",
    num_threads: int | None = None,
) -> InferenceBackend:
    """Load a model for inference.

    Args:
        model: The opened model file (:meth:`engine.model_file.ModelFile.open`); its card and bytes are reused.
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
    device_choice = check_choice(device, DEVICES, "device", "DEVICE")
    name = select_backend_name(model, backend)
    if name == "onnxruntime":
        from .onnx_backend import OnnxBackend

        return OnnxBackend(model, device=device_choice, num_threads=num_threads)
    from .torch_backend import TorchBackend

    return TorchBackend(model, device=device_choice, num_threads=num_threads)

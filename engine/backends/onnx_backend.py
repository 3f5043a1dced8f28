"""ONNX Runtime backend: CPU or CUDA execution provider, deliberate thread settings, softmax in numpy."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import BackendUnavailableError, ModelLoadError
from ..model_file import ModelFile
from .contract import allocation_failure, check_batch, check_output
from .devices import choose_device, import_backend_library, onnxruntime_cuda_status
from .probabilities import to_probabilities
from .threads import physical_core_count

logger = logging.getLogger(__name__)


class OnnxBackend:
    """Runs an ONNX model with onnxruntime.

    Attributes:
        name: ``"onnxruntime"``.
        device: ``"cpu"`` or ``"cuda"``.
        device_reason: Why this device was chosen.
        providers: Execution providers of the session, in priority order.
        num_threads: Intra-op threads (CPU).
    """

    name = "onnxruntime"

    def __init__(self, model: ModelFile, device: str = "auto", num_threads: int | None = None) -> None:
        """Take the model file's inference session (built once, from the bytes it already read).

        Args:
            model: The opened ``.onnx`` file, with its card (band count, class count, output activation).
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
            num_threads: Intra-op threads; default: the physical core count.

        Raises:
            BackendUnavailableError: If onnxruntime is missing, or CUDA is requested but not usable.
            ModelLoadError: If the model cannot be loaded or its input does not match the card.
        """
        ort = import_backend_library("onnxruntime")
        self.model_path = model.path
        self.card = model.card
        cuda_usable, cuda_reason = onnxruntime_cuda_status(ort)
        choice = choose_device(device, cuda_usable, cuda_reason, backend="onnxruntime")
        self.num_threads = num_threads if num_threads and num_threads > 0 else physical_core_count()
        providers: list[Any] = ["CPUExecutionProvider"]
        if choice.device == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": 0}))
        self._session = model.onnx_session(providers, self.num_threads)
        self.providers: list[str] = list(self._session.get_providers())
        self.device: str = choice.device
        self.device_reason: str = choice.reason
        if choice.device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            # The provider is listed but its CUDA/cuDNN libraries failed to load: onnxruntime fell back silently.
            reason = "onnxruntime could not load its CUDA libraries (CUDA/cuDNN missing or mismatched)"
            if device == "cuda":
                raise BackendUnavailableError(
                    f"DEVICE cuda was requested but {reason}. Install the CUDA and cuDNN versions this "
                    "onnxruntime-gpu needs, or choose DEVICE auto or cpu."
                )
            self.device, self.device_reason = "cpu", f"CUDA not available: {reason}"
        self._input = self._session.get_inputs()[0]
        outputs = [o.name for o in self._session.get_outputs()]
        self._output_name = "logits" if "logits" in outputs else outputs[0]
        self._check_input()
        logger.debug(
            "onnxruntime %s, providers %s, %d intra-op threads.", ort.__version__, self.providers, self.num_threads
        )

    def _check_input(self) -> None:
        shape = self._input.shape
        if len(shape) != 4:
            raise ModelLoadError(
                f"Model '{self.model_path.name}' takes a {len(shape)}-D input {shape}; a segmentation model takes "
                "(batch, bands, height, width). Re-export it."
            )
        channels = shape[1]
        if isinstance(channels, int) and channels != self.card.num_bands:
            raise ModelLoadError(
                f"Model '{self.model_path.name}' takes {channels} input channels but its card lists "
                f"{self.card.num_bands} input bands ({', '.join(self.card.input_bands)}); fix the card's input_bands "
                "or re-export the model."
            )
        if "float" not in self._input.type:
            raise ModelLoadError(
                f"Model '{self.model_path.name}' takes {self._input.type} input; the engine feeds float32 tiles. "
                "Re-export it with a float input."
            )

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """(B, C, H, W) normalised tiles -> (B, K, H, W) class probabilities."""
        x = check_batch(batch, self.card)
        if self._input.type == "tensor(float16)":
            x = x.astype(np.float16)
        try:
            (output,) = self._session.run([self._output_name], {self._input.name: x})
        except Exception as exc:  # onnxruntime raises untyped RuntimeExceptions (allocation, kernel failures)
            oom = allocation_failure(exc, "onnxruntime")
            if oom is None:
                raise
            raise oom from exc
        check_output(output, x.shape, self.card, self.model_path)
        return to_probabilities(output, self.card)

    def __repr__(self) -> str:
        return f"OnnxBackend('{self.model_path.name}', device={self.device!r}, providers={self.providers})"

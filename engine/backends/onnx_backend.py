"""ONNX Runtime backend: CPU or CUDA execution provider, deliberate thread settings, softmax in numpy."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import BackendUnavailableError, InvalidInputError, ModelLoadError
from ..export import heatmap_output_name
from ..model_file import ModelFile
from .contract import allocation_failure, check_batch, check_output
from .devices import choose_device, import_backend_library, onnxruntime_cuda_status
from .hbis import hbis_probabilities
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
        hbis_layer_count: HBIS heatmap outputs of the file (0 for models without them).
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
        self._heatmap_names = _heatmap_outputs(outputs)
        #: HBIS layers whose heatmaps the file carries (outputs ``heatmap_0`` .. ``heatmap_<L-1>``).
        self.hbis_layer_count = len(self._heatmap_names)
        self._check_input()
        shape = self._input.shape
        # Models exported with a fixed batch (Deepness models often take exactly one tile) get batches of that size.
        self._static_batch: int | None = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self._static_size: tuple[int, int] | None = None
        if isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] > 0 and shape[3] > 0:
            self._static_size = (shape[2], shape[3])
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
        x = self._feed(batch)
        if self._static_batch is None or x.shape[0] == self._static_batch:
            output = self._run(x)
        else:
            output = np.concatenate([self._run_padded(x[i : i + self._static_batch]) for i in
                                     range(0, x.shape[0], self._static_batch)])  # fmt: skip
        check_output(output, x.shape, self.card, self.model_path)
        return to_probabilities(output, self.card)

    def predict_with_hbis(
        self, batch: NDArray[np.float32], layer: int
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Class probabilities and HBIS layer ``layer``'s heatmaps, both (B, K, H, W), from one model call.

        The heatmap output (B, K, h, w) at the layer's resolution is upsampled bilinearly to the tile and turned
        into per-class probabilities by :func:`engine.backends.hbis.hbis_probabilities`.
        """
        if not 0 <= layer < self.hbis_layer_count:
            raise InvalidInputError(
                f"HBIS layer {layer} does not exist in '{self.model_path.name}' ({self.hbis_layer_count} layers)."
            )
        x = self._feed(batch)
        output, heat = self._session_run([self._output_name, self._heatmap_names[layer]], x)
        check_output(output, x.shape, self.card, self.model_path)
        if heat.ndim != 4 or heat.shape[:2] != (x.shape[0], self.card.num_classes):
            raise ModelLoadError(
                f"Model '{self.model_path.name}' returned {self._heatmap_names[layer]} of shape {heat.shape}; "
                f"expected ({x.shape[0]}, {self.card.num_classes}, h, w). Re-export it with its heatmaps."
            )
        return to_probabilities(output, self.card), hbis_probabilities(heat, x.shape[2], x.shape[3])

    def _feed(self, batch: NDArray[np.float32]) -> NDArray[Any]:
        x: NDArray[Any] = check_batch(batch, self.card)
        if self._static_size is not None and tuple(x.shape[2:]) != self._static_size:
            height, width = self._static_size
            raise ModelLoadError(
                f"Model '{self.model_path.name}' takes a fixed {width} x {height} px input but got tiles of "
                f"{x.shape[3]} x {x.shape[2]} px; set the tile size to {height} px (or leave it to the model)."
            )
        if self._input.type == "tensor(float16)":
            x = x.astype(np.float16)
        return x

    def _run(self, x: NDArray[Any]) -> NDArray[Any]:
        (output,) = self._session_run([self._output_name], x)
        return np.asarray(output)

    def _session_run(self, names: list[str], x: NDArray[Any]) -> list[Any]:
        """One model call; ONNX Runtime's allocation failures become the engine's one-line out-of-memory error."""
        try:
            outputs: list[Any] = self._session.run(names, {self._input.name: x})
        except Exception as exc:  # onnxruntime raises untyped RuntimeExceptions (allocation, kernel failures)
            oom = allocation_failure(exc, "onnxruntime")
            if oom is None:
                raise
            raise oom from exc
        return outputs

    def _run_padded(self, x: NDArray[Any]) -> NDArray[Any]:
        """Run a chunk of at most the model's fixed batch size, padding it with zero tiles."""
        size = self._static_batch or x.shape[0]
        if x.shape[0] == size:
            return self._run(x)
        padded = np.zeros((size, *x.shape[1:]), dtype=x.dtype)
        padded[: x.shape[0]] = x
        return self._run(padded)[: x.shape[0]]

    def __repr__(self) -> str:
        return f"OnnxBackend('{self.model_path.name}', device={self.device!r}, providers={self.providers})"


def _heatmap_outputs(names: list[str]) -> list[str]:
    """The HBIS heatmap outputs ``heatmap_0``, ``heatmap_1``, ... of a graph, in layer order (contiguous from 0)."""
    present = set(names)
    found: list[str] = []
    while heatmap_output_name(len(found)) in present:
        found.append(heatmap_output_name(len(found)))
    return found

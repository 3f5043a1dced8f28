"""PyTorch backend: checkpoints with a model card, or a model already in memory (training's validation).

CPU or CUDA; on CUDA, autocast (bf16 where supported, else fp16) and channels-last memory order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError, ModelLoadError
from ..model_file import ModelFile
from .contract import TensorShapes, allocation_failure, check_batch, check_output
from .devices import choose_device, import_backend_library, torch_cuda_status

__all__ = ["TorchBackend"]

logger = logging.getLogger(__name__)


class TorchBackend:
    """Runs a model from ``engine.models``: built from a checkpoint, or given in memory (:meth:`from_module`).

    Attributes:
        name: ``"torch"``.
        device: ``"cpu"`` or ``"cuda"``.
        device_reason: Why this device was chosen.
        amp_dtype: Autocast dtype on CUDA (``"bfloat16"`` where supported, else ``"float16"``); None on CPU or
            when AMP is off.
        hbis_layer_count: HBIS layers whose heatmaps the model returns (0 for models without them).
    """

    name = "torch"

    def __init__(
        self,
        model: ModelFile,
        device: str = "auto",
        num_threads: int | None = None,
        amp: bool = True,
    ) -> None:
        """Build the model from the registry and load the checkpoint's weights.

        Args:
            model: The opened checkpoint, with its card (architecture, class count, bands).
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
            num_threads: torch intra-op threads on CPU; None leaves torch's setting alone (it is process-wide).
            amp: Use autocast (bf16/fp16) on CUDA.

        Raises:
            BackendUnavailableError: If torch is missing, or CUDA is requested but not usable.
            ModelLoadError: If the checkpoint or its weights do not fit the card's architecture.
        """
        torch = import_backend_library("torch")
        cuda_usable, cuda_reason = (False, "CPU requested") if device == "cpu" else torch_cuda_status(torch)
        choice = choose_device(device, cuda_usable, cuda_reason, backend="torch")
        if num_threads and num_threads > 0 and choice.device == "cpu":
            torch.set_num_threads(num_threads)
        from ..models.from_checkpoint import model_from_checkpoint  # needs torch: imported after the check above

        module: Any = model_from_checkpoint(model.checkpoint, model.card, model.path.name)
        amp_dtype = None
        if amp and choice.device == "cuda":
            amp_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        self._setup(
            torch, module, model.card, model.path, choice.device, choice.reason, amp_dtype, choice.device == "cuda"
        )
        module.to(self.device)
        if self._channels_last:
            module.to(memory_format=torch.channels_last)  # tensor cores prefer NHWC convolutions
        logger.debug("torch %s, autocast %s.", torch.__version__, self.amp_dtype)

    @classmethod
    def from_module(
        cls,
        module: Any,
        shapes: TensorShapes,
        device: Any,
        amp: bool = False,
        channels_last: bool = False,
    ) -> TorchBackend:
        """Wrap a model that is already built and placed (validation during training), without copying it.

        Args:
            module: The ``nn.Module``, in eval mode, on ``device``.
            shapes: Its band and class counts (a model card, or training's dataset description).
            device: The ``torch.device`` the module lives on.
            amp: float16 autocast on CUDA.
            channels_last: The module is kept in channels-last order; feed tiles in that order too.
        """
        torch = import_backend_library("torch")
        backend = cls.__new__(cls)
        kind = torch.device(device).type
        amp_dtype = "float16" if amp and kind == "cuda" else None
        backend._setup(torch, module, shapes, Path("in-memory model"), kind, "the training process's device",
                       amp_dtype, channels_last)  # fmt: skip
        backend._torch_device = torch.device(device)
        return backend

    def _setup(
        self,
        torch: Any,
        module: Any,
        shapes: TensorShapes,
        path: Path,
        device: str,
        reason: str,
        amp_dtype: str | None,
        channels_last: bool,
    ) -> None:
        self._torch = torch
        self._model = module
        self.card = shapes
        self.model_path = path
        self.device: str = device
        self.device_reason: str = reason
        self.amp_dtype: str | None = amp_dtype
        self._channels_last = channels_last
        self._torch_device: Any = device
        #: HBIS layers whose heatmaps the model returns (``heatmap_count`` of BiCoR-Seg; 0 for other models).
        self.hbis_layer_count = int(getattr(module, "heatmap_count", 0))

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """(B, C, H, W) normalised tiles -> (B, K, H, W) class probabilities.

        Raises:
            OutOfMemoryError: If torch cannot allocate memory for the batch (lower BATCH_SIZE or TILE_SIZE).
        """
        try:
            return self._predict(batch)
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            oom = allocation_failure(exc, "torch")
            if oom is None:
                raise
            raise oom from exc

    def _predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        torch = self._torch
        x_np = check_batch(batch, self.card)
        with torch.inference_mode():
            output = self._forward(x_np)
            return self._to_host(self._probabilities(output, x_np.shape))

    def predict_with_hbis(
        self, batch: NDArray[np.float32], layer: int
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Class probabilities and HBIS layer ``layer``'s heatmaps, both (B, K, H, W), from one forward pass.

        The layer's heatmap logits (``SegmentationOutput.heatmaps[layer]``, at its own resolution) are upsampled
        bilinearly to the tile (``align_corners=False``, as BiCoR-Seg's heatmap supervision does) and turned into
        per-class probabilities with a softmax over the classes, on the device in float32; see
        :mod:`engine.backends.hbis`.
        """
        torch = self._torch
        x_np = check_batch(batch, self.card)
        if not 0 <= layer < self.hbis_layer_count:
            raise InvalidInputError(
                f"HBIS layer {layer} does not exist in '{self.model_path.name}' ({self.hbis_layer_count} layers)."
            )
        with torch.inference_mode():
            output = self._forward(x_np)
            probs = self._probabilities(output, x_np.shape)
            heatmaps = getattr(output, "heatmaps", ())
            if len(heatmaps) <= layer:
                raise ModelLoadError(
                    f"Model '{self.model_path.name}' returned {len(heatmaps)} HBIS heatmaps; expected at least "
                    f"{layer + 1}. Its model class does not match its declared heatmap count."
                )
            heat = heatmaps[layer].float()
            height, width = x_np.shape[2], x_np.shape[3]
            heat = torch.nn.functional.interpolate(heat, size=(height, width), mode="bilinear", align_corners=False)
            return self._to_host(probs), self._to_host(torch.softmax(heat, dim=1))

    def _forward(self, x_np: NDArray[np.float32]) -> Any:
        """The model's raw output for a checked batch (call inside ``inference_mode``)."""
        torch = self._torch
        x = torch.from_numpy(x_np).to(self._torch_device, non_blocking=True)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            with torch.autocast("cuda", dtype=getattr(torch, self.amp_dtype)):
                return self._model(x)
        return self._model(x)

    def _probabilities(self, output: Any, batch_shape: tuple[int, ...]) -> Any:
        """Class probabilities (B, K, H, W) on the device, float32, from the model's output."""
        torch = self._torch
        logits = output.logits if hasattr(output, "logits") else output
        if not isinstance(logits, torch.Tensor):
            raise ModelLoadError(
                f"Model '{self.model_path.name}' returned {type(output).__name__}; expected a Tensor or "
                "SegmentationOutput."
            )
        logits = logits.float()
        check_output(logits, batch_shape, self.card, self.model_path)
        # Softmax on the device in float32 (stable: torch subtracts the maximum), then one copy to the host.
        return logits if self.card.output_activation == "probabilities" else torch.softmax(logits, dim=1)

    @staticmethod
    def _to_host(values: Any) -> NDArray[np.float32]:
        return np.ascontiguousarray(values.cpu().numpy(), dtype=np.float32)

    def __repr__(self) -> str:
        return f"TorchBackend('{self.model_path.name}', device={self.device!r}, autocast={self.amp_dtype})"

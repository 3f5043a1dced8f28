"""PyTorch backend: checkpoints with a model card, CPU or CUDA (AMP autocast + channels_last on CUDA)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelLoadError
from ..model_file import ModelFile
from .contract import check_batch, check_output
from .devices import choose_device, import_backend_library, torch_cuda_status

logger = logging.getLogger(__name__)


class TorchBackend:
    """Runs a model from ``engine.models`` loaded from a checkpoint ``{"state_dict", "model_card"}``.

    Attributes:
        name: ``"torch"``.
        device: ``"cpu"`` or ``"cuda"``.
        device_reason: Why this device was chosen.
        amp_dtype: Autocast dtype on CUDA (``"bfloat16"`` where supported, else ``"float16"``); None on CPU or
            when AMP is off.
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
        self._torch = torch = import_backend_library("torch")
        self.model_path = model.path
        self.card = model.card
        cuda_usable, cuda_reason = (False, "CPU requested") if device == "cpu" else torch_cuda_status(torch)
        choice = choose_device(device, cuda_usable, cuda_reason, backend="torch")
        self.device: str = choice.device
        self.device_reason: str = choice.reason
        if num_threads and num_threads > 0 and self.device == "cpu":
            torch.set_num_threads(num_threads)
        self.amp_dtype: str | None = None
        if amp and self.device == "cuda":
            self.amp_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        from ..models.from_checkpoint import model_from_checkpoint  # needs torch: imported after the check above

        self._model = self._place(model_from_checkpoint(model.checkpoint, self.card, self.model_path.name))
        logger.info(
            "torch %s on %s (%s), autocast %s.", torch.__version__, self.device, self.device_reason, self.amp_dtype
        )

    def _place(self, model: Any) -> Any:
        """Move the (eval-mode) model to the chosen device, in the memory layout that device runs fastest."""
        model.to(self.device)
        if self.device == "cuda":
            model.to(memory_format=self._torch.channels_last)  # tensor cores prefer NHWC convolutions
        return model

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """(B, C, H, W) normalised tiles -> (B, K, H, W) class probabilities."""
        torch = self._torch
        x_np = check_batch(batch, self.card)
        with torch.inference_mode():
            x = torch.from_numpy(x_np).to(self.device, non_blocking=True)
            if self.device == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            if self.amp_dtype is not None:
                with torch.autocast("cuda", dtype=getattr(torch, self.amp_dtype)):
                    output = self._model(x)
            else:
                output = self._model(x)
            logits = output.logits if hasattr(output, "logits") else output
            if not isinstance(logits, torch.Tensor):
                raise ModelLoadError(
                    f"Model '{self.model_path.name}' returned {type(output).__name__}; expected a Tensor or "
                    "SegmentationOutput."
                )
            logits = logits.float()
            check_output(logits, x_np.shape, self.card, self.model_path)
            # Softmax on the device in float32 (stable: torch subtracts the maximum), then one copy to the host.
            probs = logits if self.card.output_activation == "probabilities" else torch.softmax(logits, dim=1)
            return np.ascontiguousarray(probs.cpu().numpy(), dtype=np.float32)

    def __repr__(self) -> str:
        return f"TorchBackend('{self.model_path.name}', device={self.device!r}, autocast={self.amp_dtype})"

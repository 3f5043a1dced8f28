"""What a caller of the trainer can plug in: initial weights, progress per optimizer step and validation, cancel.

``python -m training.train`` runs without hooks. ``training.finetune`` (and through it QGIS's
``bicorseg:trainmodel``) uses them to start from a base model's weights, to show the running loss after every
optimizer step and the per-class IoU of every validation, and to stop promptly when the user cancels: the trainer
checks :meth:`RunHooks.check_canceled` before every step and after every validation image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from engine.errors import CanceledError

__all__ = ["RunHooks"]


@dataclass(frozen=True)
class RunHooks:
    """Optional callbacks of one training run (every one may be None).

    Attributes:
        prepare_model: Called with the freshly built model (on the CPU, before the optimizer exists), e.g. to load
            a base model's weights into it.
        on_step: Called after every optimizer step with ``(step, loss of the step, learning rate)``.
        on_validation: Called with each validation's log row (``epoch``, ``step``, ``val_miou``, ``val_iou_<class>``,
            ...); epoch 0 is the model before training when ``run.validate_first`` is set.
        is_canceled: Returns True once the user asked to stop.
    """

    prepare_model: Callable[[nn.Module], None] | None = None
    on_step: Callable[[int, float, float], None] | None = None
    on_validation: Callable[[Mapping[str, Any]], None] | None = None
    is_canceled: Callable[[], bool] | None = None

    def check_canceled(self) -> None:
        """Raise :class:`~engine.errors.CanceledError` if the user canceled.

        Raises:
            CanceledError: The run must stop; nothing it wrote is kept.
        """
        if self.is_canceled is not None and self.is_canceled():
            raise CanceledError("Training canceled; no model was written.")

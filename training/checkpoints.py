"""Training checkpoints: weights, model card, resolved config and the state needed to resume, in one dict.

Layout (every value is safe for ``torch.load(weights_only=True)``)::

    {"state_dict": model weights (no DDP "module." prefix),
     "model_card": ModelCard JSON (engine.model_card.CHECKPOINT_KEY),
     "config": resolved TrainConfig as a plain dict,
     "optimizer": optimizer state, "scheduler": schedule state, "scaler": AMP scaler state,
     "epoch": completed epochs, "step": optimizer steps, "best_metric": best monitored value,
     "elapsed_s": training seconds so far, "history": per-epoch log rows}

The engine's torch backend reads the same file (``state_dict`` + ``model_card``), so a checkpoint is also a model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.model_card import CHECKPOINT_KEY, ModelCard, card_from_checkpoint
from engine.model_file import read_checkpoint
from engine.models.from_checkpoint import model_from_checkpoint

__all__ = ["load_model", "load_training_checkpoint", "save_checkpoint", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    card: ModelCard,
    config: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Mapping[str, Any] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    epoch: int = 0,
    step: int = 0,
    best_metric: float | None = None,
    elapsed_s: float = 0.0,
    history: list[dict[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file, then rename), so a crash never leaves half a file.

    Args:
        path: Destination ``.pt`` file.
        model: The model (a DDP wrapper is unwrapped).
        card: Model card to embed.
        config: Resolved config as a plain dict.
        optimizer: Optimizer whose state allows resuming; None for weights-only checkpoints.
        scheduler: Schedule state (plain numbers).
        scaler: AMP gradient scaler, if used.
        epoch: Completed epochs.
        step: Optimizer steps taken.
        best_metric: Best monitored validation value so far.
        elapsed_s: Seconds of training so far (time budgets continue across resumes).
        history: Per-epoch log rows.
        extra: Further top-level entries (plain data), e.g. the best validation confusion matrix.

    Returns:
        The path written.
    """
    payload: dict[str, Any] = {
        "state_dict": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
        CHECKPOINT_KEY: card.to_json(),
        "config": dict(config),
        "epoch": int(epoch),
        "step": int(step),
        "best_metric": None if best_metric is None else float(best_metric),
        "elapsed_s": float(elapsed_s),
        "history": list(history or []),
    }
    for key, value in (extra or {}).items():
        payload.setdefault(key, value)
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = dict(scheduler)
    if scaler is not None and scaler.is_enabled():
        payload["scaler"] = scaler.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU without executing pickled code (``weights_only``).

    Raises:
        engine.errors.ModelLoadError: If the file is missing, corrupt or not a dict.
    """
    return dict(read_checkpoint(Path(path)))


def load_model(checkpoint: Path | Mapping[str, Any], device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model described by a checkpoint's card and load its weights (strictly), in eval mode.

    Args:
        checkpoint: A checkpoint path or an already loaded checkpoint dict.
        device: Where to put the model.

    Returns:
        ``(model, card)``.

    Raises:
        engine.errors.ModelCardError: If the checkpoint carries no valid card.
        engine.errors.ModelLoadError: If the weights do not fit the architecture the card names.
    """
    data = load_training_checkpoint(checkpoint) if isinstance(checkpoint, Path | str) else checkpoint
    source = Path(checkpoint).name if isinstance(checkpoint, Path | str) else "checkpoint"
    card = card_from_checkpoint(data, source)
    model = model_from_checkpoint(data, card, source)
    model.to(device)
    return model, card

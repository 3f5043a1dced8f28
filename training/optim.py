"""Optimizers: AdamW with decay-free biases and norms, optionally wrapped in Lookahead (Zhang et al., 2019)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from engine.errors import InvalidInputError
from engine.models.base import SegmentationModel

from .config import OptimConfig

__all__ = ["Lookahead", "build_optimizer", "set_learning_rate"]


class Lookahead(Optimizer):
    """Lookahead wrapper: every ``k`` inner steps, move slow weights ``alpha`` of the way to the fast ones.

    After each synchronisation the fast (model) weights are reset to the slow weights, so the model always
    holds the weights the inner optimizer works on. The wrapper shares the inner optimizer's parameter groups,
    so setting ``group["lr"]`` on either changes both.

    Args:
        base: The inner optimizer (e.g. AdamW).
        k: Synchronisation period in inner steps.
        alpha: Slow-weight step size in (0, 1].
    """

    def __init__(self, base: Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if k < 1:
            raise ValueError(f"Lookahead k must be at least 1, got {k}.")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead alpha must be in (0, 1], got {alpha}.")
        self.base = base
        self.k = k
        self.alpha = alpha
        self.inner_steps = 0
        super().__init__(base.param_groups, base.defaults)
        # Share the very same group dicts (not copies) so learning-rate changes reach the inner optimizer.
        self.param_groups = base.param_groups

    def _params(self) -> Iterable[torch.Tensor]:
        for group in self.param_groups:
            yield from group["params"]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one inner step; every ``k``-th step, synchronise the slow and fast weights."""
        for param in self._params():
            if "slow" not in self.state[param]:
                # The slow weights start where the fast weights were before the first inner step.
                self.state[param]["slow"] = param.detach().clone()
        loss = self.base.step(closure)
        self.inner_steps += 1
        if self.inner_steps % self.k == 0:
            for param in self._params():
                slow = self.state[param]["slow"]
                slow.add_(param.detach() - slow, alpha=self.alpha)
                param.copy_(slow)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Inner optimizer state plus the slow weights and the step counter."""
        slow = [self.state[p]["slow"].clone() if "slow" in self.state[p] else None for p in self._params()]
        return {"base": self.base.state_dict(), "slow": slow, "inner_steps": self.inner_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.base.load_state_dict(state_dict["base"])
        self.param_groups = self.base.param_groups
        self.inner_steps = int(state_dict["inner_steps"])
        for param, slow in zip(self._params(), state_dict["slow"], strict=True):
            if slow is not None:
                self.state[param]["slow"] = slow.to(device=param.device, dtype=param.dtype)


def _encoder_test(model: nn.Module) -> Callable[[str], bool]:
    """Which parameter names are the encoder's: the model's own declaration, else the generic ``backbone.``."""
    if isinstance(model, SegmentationModel) and model.encoder_prefixes:
        return model.is_encoder_parameter
    return lambda name: name.startswith("backbone.")


def _param_groups(model: nn.Module, config: OptimConfig) -> list[dict[str, Any]]:
    """Split parameters into (encoder or not) x (decayed or not) groups, dropping empty ones.

    Raises:
        InvalidInputError: If ``backbone_lr_mult`` is not 1 but no parameter belongs to an encoder (the option
            would silently do nothing).
    """
    is_encoder = _encoder_test(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Biases and normalisation weights are 1-D; decaying them only hurts (standard AdamW practice).
        decay = param.ndim > 1
        groups.setdefault((is_encoder(name), decay), []).append(param)
    if config.backbone_lr_mult != 1.0 and not any(encoder for encoder, _ in groups):
        raise InvalidInputError(
            f"optim.backbone_lr_mult={config.backbone_lr_mult:g} but {type(model).__name__} declares no encoder "
            "parameters (encoder_prefixes); set optim.backbone_lr_mult=1."
        )
    out = []
    for (encoder, decay), params in sorted(groups.items()):
        mult = config.backbone_lr_mult if encoder else 1.0
        out.append(
            {
                "params": params,
                "weight_decay": config.weight_decay if decay else 0.0,
                "lr": config.lr * mult,
                "lr_mult": mult,
            }
        )
    return out


def build_optimizer(model: nn.Module, config: OptimConfig) -> Optimizer:
    """AdamW over the model's trainable parameters, wrapped in :class:`Lookahead` when configured.

    Every parameter group carries ``lr_mult`` (``optim.backbone_lr_mult`` for the model's declared encoder,
    :attr:`~engine.models.base.SegmentationModel.encoder_prefixes`, else 1), which :func:`set_learning_rate`
    applies.
    """
    optimizer: Optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, betas=config.betas)
    if config.lookahead:
        optimizer = Lookahead(optimizer, k=config.lookahead_k, alpha=config.lookahead_alpha)
    return optimizer


def set_learning_rate(optimizer: Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr`` times its ``lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * float(group.get("lr_mult", 1.0))

"""One training epoch: optimizer steps with gradient accumulation, AMP, clipping, CutMix, logging and stopping."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from tqdm import tqdm

from engine.errors import BiCoRSegError
from engine.models.outputs import SegmentationOutput
from training.config import TrainConfig
from training.distributed import Distributed, broadcast_flag, mean_over_ranks
from training.hooks import RunHooks
from training.optim import set_learning_rate
from training.run_log import RunLog
from training.transforms import cutmix_batch

__all__ = ["EpochResult", "TrainState", "seed_everything", "train_one_epoch"]

LossFn = Callable[[SegmentationOutput, Tensor], tuple[Tensor, dict[str, float]]]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """Progress that a checkpoint must carry to resume exactly where the run was.

    Attributes:
        epoch: Completed epochs.
        step: Optimizer steps taken.
        best_metric: Best monitored validation value (None before the first validation).
        elapsed_s: Seconds spent so far (time budgets continue across resumes).
        history: One row per completed epoch (the metrics.csv table).
        best_confusion: Validation confusion matrix of the best epoch, as nested lists.
    """

    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_confusion: Any = None

    def checkpoint_fields(self) -> dict[str, Any]:
        """Keyword arguments of :func:`training.checkpoints.save_checkpoint` that carry this state."""
        confusion = None if self.best_confusion is None else np.asarray(self.best_confusion).tolist()
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_metric": self.best_metric,
            "elapsed_s": self.elapsed_s,
            "history": self.history,
            "extra": {"best_confusion": confusion},
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> TrainState:
        """The state saved by :meth:`checkpoint_fields`."""
        best = checkpoint.get("best_metric")
        return cls(
            epoch=int(checkpoint.get("epoch", 0)),
            step=int(checkpoint.get("step", 0)),
            best_metric=None if best is None else float(best),
            elapsed_s=float(checkpoint.get("elapsed_s", 0.0)),
            history=[dict(row) for row in checkpoint.get("history", [])],
            best_confusion=checkpoint.get("best_confusion"),
        )


@dataclass(frozen=True)
class EpochResult:
    """What one epoch of training did.

    Attributes:
        mean_loss: Mean total loss over the epoch's micro-batches.
        mean_parts: Mean of each named loss part.
        last_lr: Learning rate of the last step.
        stopped_early: The run must stop after this epoch (time budget or ``run.max_steps`` reached).
        stop_reason: Why it stopped early.
    """

    mean_loss: float
    mean_parts: dict[str, float]
    last_lr: float
    stopped_early: bool = False
    stop_reason: str = ""


def _micro_batch_context(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    # Under DDP, skip the gradient all-reduce on all but the last micro-batch of an accumulation.
    if not sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def train_one_epoch(
    *,
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Iterator[Mapping[str, Tensor]],
    num_steps: int,
    config: TrainConfig,
    dist_ctx: Distributed,
    state: TrainState,
    log: RunLog,
    use_amp: bool,
    lr_for: Callable[[int], float],
    out_of_time: Callable[[], bool],
    epoch: int,
    hooks: RunHooks | None = None,
) -> EpochResult:
    """Run ``num_steps`` optimizer steps of ``run.grad_accum_steps`` micro-batches each.

    Args:
        model: The model (possibly DDP-wrapped), trained in place.
        loss_fn: ``(output, mask) -> (total, parts)``.
        optimizer: AdamW or Lookahead(AdamW).
        scaler: AMP gradient scaler (disabled on CPU).
        batches: Endless iterator of ``{"image": (B, C, H, W), "mask": (B, H, W)}`` batches.
        num_steps: Optimizer steps in this epoch.
        config: The run's config.
        dist_ctx: This process's place in the run.
        state: Updated in place (``step``).
        log: Receives the loss every ``run.log_every_steps`` steps.
        use_amp: float16 autocast (CUDA only).
        lr_for: Learning rate for a given optimizer step.
        out_of_time: Whether the time budget is spent (checked after every step, agreed by all processes).
        epoch: 0-based epoch index (seeds the CutMix draws).
        hooks: Told about every step (``on_step``); asked before every step whether the user canceled.

    Raises:
        BiCoRSegError: If the loss becomes NaN or infinite without AMP (lower the learning rate).
        CanceledError: If ``hooks`` report that the user canceled.
    """
    model.train()
    device = dist_ctx.device
    accum = config.run.grad_accum_steps
    rng = np.random.default_rng([config.run.seed, epoch, dist_ctx.rank])
    totals: dict[str, float] = {}
    loss_sum, micro_batches, lr = 0.0, 0, lr_for(state.step)
    stop_reason = ""
    bar = tqdm(total=num_steps, desc=f"epoch {epoch + 1}/{config.schedule.epochs}", leave=False,
               disable=not (dist_ctx.is_main and config.run.progress_bar))  # fmt: skip
    for _ in range(num_steps):
        if hooks is not None:
            hooks.check_canceled()
        lr = lr_for(state.step)
        set_learning_rate(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(accum):
            batch = next(batches)
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            if config.data.cutmix_p > 0:
                images, masks = cutmix_batch(images, masks, rng, p=config.data.cutmix_p)
            if config.run.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with _micro_batch_context(model, sync=micro == accum - 1):
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    output = model(images)
                    loss, parts = loss_fn(output, masks)
                scaler.scale(loss / accum).backward()  # type: ignore[no-untyped-call]
            value = float(loss.detach())
            if not math.isfinite(value) and not use_amp:
                raise BiCoRSegError(
                    f"The training loss became {value} at step {state.step}; lower optim.lr "
                    "or set optim.grad_clip_norm (e.g. 1.0)."
                )
            step_loss += value / accum
            micro_batches += 1
            for name, part in parts.items():
                totals[name] = totals.get(name, 0.0) + float(part)
        if config.optim.grad_clip_norm > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        state.step += 1
        loss_sum += step_loss
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if hooks is not None and hooks.on_step is not None:
            hooks.on_step(state.step, step_loss, lr)
        if state.step % config.run.log_every_steps == 0:  # every process gets here at the same step
            log.log_step(state.step, {"loss": mean_over_ranks(step_loss, dist_ctx), "lr": lr})
        if config.run.max_steps and state.step >= config.run.max_steps:
            stop_reason = f"run.max_steps={config.run.max_steps} reached"
        elif broadcast_flag(out_of_time(), dist_ctx):
            stop_reason = f"time budget run.max_minutes={config.run.max_minutes:g} spent"
        if stop_reason:
            break
    bar.close()
    count = max(micro_batches, 1)
    return EpochResult(
        mean_loss=loss_sum * accum / count,
        mean_parts={name: value / count for name, value in totals.items()},
        last_lr=lr,
        stopped_early=bool(stop_reason),
        stop_reason=stop_reason,
    )

"""Train a segmentation model: ``python -m training.train --config training/configs/NAME.yaml [--set key=value]``.

Reads top to bottom like the run it performs:

1. config (YAML + ``--set`` overrides, validated), distributed set-up (``torchrun`` -> DDP: gloo on CPU, nccl on
   CUDA), seeds and threads;
2. data: the training split with random crops, the validation split (never the test split) as whole images;
3. model, model card, optimizer (AdamW, optional Lookahead), loss, AMP scaler; resume from a checkpoint;
4. the loop: per epoch, optimizer steps with gradient accumulation and a warm-up + cosine learning rate, then
   sliding-window validation on whole images through the engine's tiling and stitching;
   ``last.pt`` every epoch, ``best.pt`` when the monitored metric improves;
5. at the end: plots of the curves and of the best confusion matrix.

Only rank 0 writes files. The run folder gets best.pt, last.pt, config.yaml, metrics.csv, steps.csv,
val_metrics.json, tensorboard/ and the PNG plots.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import BiCoRSegError, InvalidInputError
from engine.evaluation.metrics import SegmentationMetrics
from engine.models import create_model
from training.checkpoints import load_training_checkpoint, save_checkpoint, unwrap_model
from training.config import TrainConfig, config_to_dict, load_config, save_config
from training.distributed import Distributed, all_reduce_sum, broadcast_flag, mean_over_ranks, setup_distributed
from training.evaluate import card_metrics, metrics_summary, score_confusion, validate, write_metrics_json
from training.hooks import RunHooks
from training.losses import LossConfig, build_loss
from training.optim import build_optimizer
from training.plots import plot_run
from training.pretrain import load_backbone_weights
from training.run_data import RunData, build_run_data, make_card
from training.run_log import RunLog
from training.schedule import learning_rate
from training.steps import EpochResult, TrainState, seed_everything, train_one_epoch

__all__ = ["main", "run_training"]

logger = logging.getLogger(__name__)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="YAML config (see training/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")  # fmt: skip
    parser.add_argument("--resume", default=None, metavar="PATH",
                        help="continue from this checkpoint ('auto' = last.pt in the run folder)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code (2 for a bad config or input)."""
    args = _parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = list(args.set) + ([f"run.resume={args.resume}"] if args.resume else [])
        config = load_config(args.config, overrides)
        if not config.run.name:
            config.run.name = args.config.stem
        run_training(config)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BiCoRSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_training(config: TrainConfig, hooks: RunHooks | None = None) -> Path:
    """Train as configured and return the run folder (see the module docstring for what it holds).

    Args:
        config: The validated configuration.
        hooks: Initial weights, progress and cancel callbacks (``training.finetune`` uses them); None = none.

    Raises:
        CanceledError: If ``hooks`` report that the user canceled.
    """
    dist_ctx = setup_distributed(config.run.device)
    try:
        return _fit(config, dist_ctx, hooks or RunHooks())
    finally:
        dist_ctx.close()


def _resolve_resume(config: TrainConfig, run_dir: Path) -> Path | None:
    if config.run.resume == "auto":
        last = run_dir / "last.pt"
        return last if last.is_file() else None
    if config.run.resume:
        path = Path(config.run.resume)
        if not path.is_file():
            raise InvalidInputError(f"Checkpoint '{path}' to resume from does not exist; check run.resume / --resume.")
        return path
    if (run_dir / "last.pt").is_file():
        raise InvalidInputError(
            f"Run folder '{run_dir}' already holds last.pt; continue it with --resume auto, "
            "or start a new run with --set run.name=OTHER."
        )
    return None


def _build_model(config: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    model: nn.Module = create_model(config.model.name, num_classes=num_classes, **config.model.options)
    model_channels = int(getattr(model, "in_channels", in_channels))
    if model_channels != in_channels:
        raise InvalidInputError(
            f"Model '{config.model.name}' takes {model_channels} bands but the dataset has {in_channels}; "
            "set model.options.in_channels."
        )
    if config.model.pretrained_backbone:
        load_backbone_weights(model, Path(config.model.pretrained_backbone))
    return model


def _fit(config: TrainConfig, dist_ctx: Distributed, hooks: RunHooks) -> Path:
    run_dir = Path(config.run.out_dir) / config.run.name
    if dist_ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    resume_path = _resolve_resume(config, run_dir)
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    seed_everything(config.run.seed + dist_ctx.rank)
    device = dist_ctx.device

    # --- data ---------------------------------------------------------------------------------------------------
    data: RunData = build_run_data(config, dist_ctx)
    info = data.info

    # --- model, card, optimizer, loss ----------------------------------------------------------------------------
    model = _build_model(config, info.num_classes, len(info.band_names))
    if hooks.prepare_model is not None:
        hooks.prepare_model(model)
    model = model.to(device)
    if config.run.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    card = make_card(config, info, data.normalization, model)
    if dist_ctx.world_size > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    optimizer = build_optimizer(model, config.optim)
    use_amp = config.run.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = build_loss(
        config.model.name,  # the loss recipe follows the model family (hi_resnet*, bicorseg*)
        LossConfig(num_classes=info.num_classes, ignore_index=info.ignore_index, **config.loss),
    )

    state = TrainState() if resume_path is None else _restore(resume_path, model, optimizer, scaler)

    if dist_ctx.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.run.ddp_find_unused,
        )

    resolved = config_to_dict(config)
    log = RunLog(run_dir, tensorboard=config.run.tensorboard, enabled=dist_ctx.is_main)
    if dist_ctx.is_main:
        save_config(config, run_dir / "config.yaml")
        logger.info("Run folder %s; %d training batches per epoch on %s (world size %d).",
                    run_dir, data.steps_per_epoch * config.run.grad_accum_steps, device, dist_ctx.world_size)  # fmt: skip

    # --- the schedule: optimizer steps, time budget ---------------------------------------------------------------
    total_steps = config.schedule.epochs * data.steps_per_epoch
    warmup_steps = config.schedule.warmup_epochs * data.steps_per_epoch
    budget_s = config.run.max_minutes * 60.0

    def lr_for(step: int, elapsed_s: float) -> float:
        # With a time budget the cosine is squeezed into it: the position is whichever is further along,
        # the step count or the elapsed share of the budget, so the rate reaches its floor as time runs out.
        # The warm-up always counts optimizer steps: a time position would skip it on a large total_steps.
        position = float(step)
        if budget_s > 0 and step >= warmup_steps:
            position = max(position, total_steps * elapsed_s / budget_s)
        return learning_rate(position, total_steps, config.optim.lr, warmup_steps, config.schedule.min_lr)

    # --- the loop --------------------------------------------------------------------------------------------------
    if config.run.validate_first and state.epoch == 0:
        # A baseline row (epoch 0): the untrained model's validation scores, so the curves show what training did.
        baseline, _ = _validation_scores(model, data, config, device, use_amp, dist_ctx, hooks)
        state.history.append({"epoch": 0, "step": 0, **baseline})
        if hooks.on_validation is not None:
            hooks.on_validation(state.history[-1])
        if dist_ctx.is_main:
            log.log_epoch(state.history)
            logger.info("epoch 0 (before training): %s", _format_row(state.history[-1]))
    started = time.monotonic() - state.elapsed_s
    for epoch in range(state.epoch, config.schedule.epochs):
        data.set_epoch(epoch)
        result: EpochResult = train_one_epoch(
            model=model, loss_fn=loss_fn, optimizer=optimizer, scaler=scaler, batches=data.train_batches(epoch),
            num_steps=data.steps_per_epoch,
            config=config, dist_ctx=dist_ctx, state=state, log=log, use_amp=use_amp,
            lr_for=lambda step: lr_for(step, time.monotonic() - started),
            out_of_time=lambda: budget_s > 0 and time.monotonic() - started >= budget_s,
            epoch=epoch, hooks=hooks,
        )  # fmt: skip
        state.epoch = epoch + 1
        last_epoch = state.epoch == config.schedule.epochs or result.stopped_early
        # Each process saw its own shard: log the mean over processes, not rank 0's share.
        row: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "lr": result.last_lr,
                               "train_loss": mean_over_ranks(result.mean_loss, dist_ctx)}  # fmt: skip
        row.update({f"train_{k}": mean_over_ranks(v, dist_ctx)
                    for k, v in sorted(result.mean_parts.items()) if k != "total"})  # fmt: skip
        if state.epoch % config.run.val_every_epochs == 0 or last_epoch:
            # Every process predicts its share of the whole validation images; the confusion matrices are summed.
            values, scores = _validation_scores(model, data, config, device, use_amp, dist_ctx, hooks)
            row.update(values)
            if _improved(row.get(f"val_{config.run.monitor}", math.nan), state.best_metric):
                state.best_metric = float(row[f"val_{config.run.monitor}"])
                state.best_confusion = scores.confusion
                card = card.replace(metrics=card_metrics(scores))
                if dist_ctx.is_main:
                    save_checkpoint(run_dir / "best.pt", model=model, card=card, config=resolved, epoch=state.epoch,
                                    step=state.step, best_metric=state.best_metric)  # fmt: skip
                    write_metrics_json(scores, run_dir / "val_metrics.json", epoch=state.epoch,
                                       split=config.data.val_split)  # fmt: skip
        row["elapsed_s"] = round(time.monotonic() - started, 1)
        state.history.append(row)
        state.elapsed_s = time.monotonic() - started
        if hooks.on_validation is not None and "val_miou" in row:
            hooks.on_validation(row)
        if dist_ctx.is_main:
            log.log_epoch(state.history)
        if dist_ctx.is_main and config.run.save_last:
            save_checkpoint(run_dir / "last.pt", model=model, card=card, config=resolved, optimizer=optimizer,
                            scheduler={"total_steps": total_steps, "warmup_steps": warmup_steps},
                            scaler=scaler, **state.checkpoint_fields())  # fmt: skip
        if dist_ctx.is_main:
            logger.info("epoch %d: %s", state.epoch, _format_row(row))
        if broadcast_flag(result.stopped_early, dist_ctx):
            logger.info("Stopping after epoch %d: %s.", state.epoch, result.stop_reason or "budget reached")
            break

    # --- the end: plots ----------------------------------------------------------------------------------------------
    if dist_ctx.is_main:
        log.close()
        if config.run.plots:
            plot_run(run_dir, state.best_confusion, info.class_names)
        logger.info("Done: best val %s = %s; files in %s.", config.run.monitor, state.best_metric, run_dir)
    return run_dir


def _validation_scores(
    model: nn.Module,
    data: RunData,
    config: TrainConfig,
    device: torch.device,
    use_amp: bool,
    dist_ctx: Distributed,
    hooks: RunHooks,
) -> tuple[dict[str, float], SegmentationMetrics]:
    """Validation loss and scores of the whole validation images, summed over all processes.

    Every process predicts its share of the images; confusion matrices and loss sums are added up. The hooks are
    asked after every image whether the user canceled.
    """
    local = validate(unwrap_model(model), data.val_samples(), data.info, config, device, use_amp,
                     on_image=lambda _index, _labels: hooks.check_canceled())  # fmt: skip
    scores = score_confusion(all_reduce_sum(local.confusion, dist_ctx), data.info)
    nll_sum, pixels = all_reduce_sum(np.array([local.nll_sum, local.pixel_count], np.float64), dist_ctx)
    values = {"val_loss": float(nll_sum / pixels) if pixels else math.nan}
    values.update({f"val_{k}": v for k, v in metrics_summary(scores).items()})
    return values, scores


def _restore(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> TrainState:
    """Load weights, optimizer and AMP scaler state from a checkpoint and return the progress it recorded."""
    checkpoint = load_training_checkpoint(path)
    unwrap_model(model).load_state_dict(checkpoint["state_dict"])
    if "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if "scaler" in checkpoint and scaler.is_enabled():
        scaler.load_state_dict(checkpoint["scaler"])
    state = TrainState.from_checkpoint(checkpoint)
    logger.info("Resumed from %s at epoch %d, step %d.", path, state.epoch, state.step)
    return state


def _improved(value: float, best: float | None) -> bool:
    """Higher is better; a NaN score (nothing scored) only counts when there is no best yet."""
    if best is None or math.isnan(best):
        return True
    return not math.isnan(value) and value > best


def _format_row(row: dict[str, Any]) -> str:
    keys = ("step", "lr", "train_loss", "val_loss", "val_miou", "val_mf1", "val_oa", "elapsed_s")
    return ", ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys if k in row)


if __name__ == "__main__":
    raise SystemExit(main())

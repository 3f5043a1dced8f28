"""The data side of a run: training loader (random crops, sharded under DDP), validation images, model card."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from engine.errors import InvalidInputError
from engine.model_card import ModelCard
from training.config import TrainConfig
from training.datasets import DatasetInfo, SegmentationDataset, build_dataset
from training.distributed import Distributed
from training.transforms import Normalization, build_train_transforms

__all__ = ["RunData", "build_run_data", "make_card"]

logger = logging.getLogger(__name__)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker differently (base seed + id); give NumPy's global generator the same seed.
    np.random.seed(torch.initial_seed() % 2**32)


@dataclass
class RunData:
    """Everything the loop needs from the data.

    Attributes:
        info: Classes, palette, bands, ignore index and evaluation classes of the dataset.
        normalization: Band scaling and standardisation (also written into the model card).
        train_set: The training split, with augmentation.
        val_set: The validation split: whole images, no augmentation.
        loader: Training batches.
        sampler: The distributed sampler under DDP, else None.
        steps_per_epoch: Optimizer steps per epoch.
        dist_ctx: This process's place in the run.
        max_val_images: Validate on at most this many images (0 = all).
    """

    info: DatasetInfo
    normalization: Normalization
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    loader: DataLoader[dict[str, torch.Tensor]]
    sampler: Sampler[int] | None
    steps_per_epoch: int
    dist_ctx: Distributed
    max_val_images: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the distributed shards for this epoch."""
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def train_batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches: passes over the training set, restarted as needed (``steps_per_epoch`` may exceed one)."""
        passes = 0
        while True:
            if passes and isinstance(self.sampler, DistributedSampler):
                self.sampler.set_epoch(epoch * 1000 + passes)
            yield from self.loader
            passes += 1

    def val_samples(self) -> Iterator[Mapping[str, torch.Tensor]]:
        """This process's share of the validation images (every world_size-th image)."""
        count = len(self.val_set)
        if self.max_val_images:
            count = min(count, self.max_val_images)
        for index in range(self.dist_ctx.rank, count, self.dist_ctx.world_size):
            yield self.val_set[index]


def _split_options(config: TrainConfig, train: bool) -> dict[str, Any]:
    options = dict(config.data.options)
    if train:
        options.update(config.data.train_options)
    return options


def build_run_data(config: TrainConfig, dist_ctx: Distributed) -> RunData:
    """Build the training loader and the validation split described by ``config.data``.

    Raises:
        InvalidInputError: If the splits disagree on the classes or the training split is smaller than a batch.
    """
    cfg = config.data
    overlap = set(map(str, cfg.options.get("val_tiles", ()))) & set(map(str, cfg.options.get("test_tiles", ())))
    if overlap:
        raise InvalidInputError(
            f"Tiles {sorted(overlap)} are in both data.options.val_tiles and data.options.test_tiles; the validation "
            "split must never be the test split: hold out different tiles."
        )
    normalization = Normalization(mean=cfg.norm_mean, std=cfg.norm_std, value_range=cfg.value_range)
    transforms = build_train_transforms(
        crop_size_px=cfg.crop_size_px,
        scales=cfg.scales,
        flip_p=cfg.flip_p,
        rot90_p=cfg.rot90_p,
        max_ratio=cfg.smart_crop_max_ratio,
        colour_jitter=cfg.colour_jitter,
        value_range=cfg.value_range,
    )
    train_set = build_dataset(cfg.name, cfg.root, cfg.train_split, transforms=transforms,
                              normalization=normalization, mosaic_p=cfg.mosaic_p, **_split_options(config, True))  # fmt: skip
    val_set = build_dataset(cfg.name, cfg.root, cfg.val_split, normalization=normalization,
                            **_split_options(config, False))  # fmt: skip
    info = train_set.info
    if val_set.info.class_names != info.class_names:
        raise InvalidInputError(
            f"Validation split '{cfg.val_split}' has classes {val_set.info.class_names} but training has "
            f"{info.class_names}; both splits must come from the same dataset options."
        )
    if len(cfg.norm_mean) != len(info.band_names):
        raise InvalidInputError(
            f"data.norm_mean has {len(cfg.norm_mean)} values but {info.name} images have {len(info.band_names)} bands."
        )
    shared = set(info.splits.get(cfg.train_split, ())) & set(info.splits.get(cfg.val_split, ()))
    if shared:
        logger.warning("Validation split '%s' is also trained on (%s): its scores are optimistic; do not report them.",
                       cfg.val_split, ", ".join(sorted(shared)))  # fmt: skip
    per_step = cfg.batch_size * dist_ctx.world_size
    if len(train_set) < per_step:
        raise InvalidInputError(
            f"Training split '{cfg.train_split}' has {len(train_set)} samples, fewer than one batch of {per_step}; "
            "lower data.batch_size."
        )
    sampler: Sampler[int] | None = None
    if dist_ctx.world_size > 1:
        sampler = DistributedSampler(train_set, num_replicas=dist_ctx.world_size, rank=dist_ctx.rank,
                                     shuffle=True, seed=config.run.seed, drop_last=True)  # fmt: skip
    generator = torch.Generator().manual_seed(config.run.seed + dist_ctx.rank)
    loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=dist_ctx.device.type == "cuda",
        drop_last=True,  # BiCoR-Seg's Fisher term needs at least 2 samples per batch
        worker_init_fn=_seed_worker,
        generator=generator,
        persistent_workers=cfg.num_workers > 0,
    )
    steps = config.schedule.steps_per_epoch or len(loader) // config.run.grad_accum_steps
    if steps < 1:
        raise InvalidInputError(
            f"One pass over the training split gives {len(loader)} batches, fewer than run.grad_accum_steps="
            f"{config.run.grad_accum_steps}; lower it or set schedule.steps_per_epoch."
        )
    logger.info("%s: %d training samples, %d validation images.", info.name, len(train_set), len(val_set))
    return RunData(info=info, normalization=normalization, train_set=train_set, val_set=val_set, loader=loader,
                   sampler=sampler, steps_per_epoch=steps, dist_ctx=dist_ctx,
                   max_val_images=config.run.max_val_images)  # fmt: skip


def _input_dtype(value_range: tuple[float, float]) -> str:
    high = value_range[1]
    if high <= 1.0:
        return "float32"
    return "uint8" if high <= 255 else "uint16"


def make_card(config: TrainConfig, info: DatasetInfo, normalization: Normalization, model: nn.Module) -> ModelCard:
    """The model card of this run: architecture, classes and colours, normalisation, tiling, data and licence.

    Metrics are added when a validation improves (``card.replace(metrics=...)``).
    """
    m = config.model
    options = {k: v for k, v in m.options.items() if k not in ("pretrained", "pretrained_path", "weights")}
    train_note = ", ".join(f"{k}={v}" for k, v in sorted(config.data.options.items()))
    return ModelCard(
        name=m.display_name or f"{m.name} trained on {info.name}",
        architecture=m.name,
        class_names=info.class_names,
        class_colors=info.hex_colors,
        architecture_args=options,
        input_bands=info.band_names,
        input_dtype=_input_dtype(normalization.value_range),
        input_value_range=normalization.value_range,
        norm_mean=normalization.mean,
        norm_std=normalization.std,
        ignore_index=info.ignore_index,
        gsd_m=m.gsd_m or info.gsd_m,
        tile_size_px=m.tile_size_px,
        overlap_px=m.overlap_px,
        size_divisor_px=int(getattr(model, "size_divisor_px", 32)),
        description=m.description or f"{m.name} for {info.name} land cover ({', '.join(info.class_names)}).",
        license=m.license,
        citation=m.citation,
        training_data=(
            f"{info.name}, split '{config.data.train_split}' ({train_note or 'default options'}); "
            f"best checkpoint chosen on split '{config.data.val_split}'; {info.protocol}"
        ),
    )

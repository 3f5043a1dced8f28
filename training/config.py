"""Training configuration: a tree of dataclasses loaded from YAML, with type-checked ``--set`` overrides.

A config file is plain YAML data with up to six sections (``data``, ``model``, ``loss``, ``optim``,
``schedule``, ``run``); every key must be a field of the matching dataclass below, so a typo fails loudly
with the list of valid keys instead of being ignored. Command-line overrides use dotted paths::

    python -m training.train --config training/configs/dubai_hi_resnet_small.yaml --set optim.lr=3e-4

Values are parsed as YAML scalars (``3e-4``, ``true``, ``[0.5, 1.0]``) and checked against the field type.
Free-form option mappings (``data.options``, ``model.options``) accept any sub-key:
``--set model.options.width=32``. Nothing is ever ``exec``-uted.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from training.dataclass_tree import (
    ConfigError,
    apply_override,
    build_dataclass,
    coerce_value,
    parse_override,
    valid_keys,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_override",
    "resolve_config",
    "save_config",
]


@dataclass
class DataConfig:
    """Which dataset to train on and how to sample it.

    Attributes:
        name: Dataset registry name (see ``training.datasets.DATASETS``), e.g. ``"loveda"``, ``"dubai_aerial"``.
        root: Folder holding the dataset (raw or prepared layout, as the dataset class expects).
        train_split: Split used for training (``"train"``, or ``"train_val"`` for LoveDA test submissions).
        val_split: Split used to choose the best checkpoint; never the test split.
        test_split: Split scored by ``training.evaluate``.
        crop_size_px: Edge of the random training crops, in pixels.
        batch_size: Training batch size per process (the effective batch is this x processes x accumulation).
        num_workers: DataLoader worker processes (0 = load in the main process).
        cutmix_p: Probability of segmentation CutMix per training batch (Hi-ResNet recipe: 0.5).
        scales: Random rescale factors drawn per training sample (before the crop).
        flip_p: Probability of each of the horizontal and vertical flips.
        rot90_p: Probability of a random quarter turn.
        smart_crop_max_ratio: Re-draw a crop (up to 10 times) while one class covers more than this share.
        mosaic_p: Probability of a 4-image mosaic per training sample.
        colour_jitter: Photometric jitter strength in [0, 1) (brightness, contrast, saturation, band gains); 0 = off.
        norm_mean: Per-band mean subtracted after scaling to [0, 1] (written into the model card).
        norm_std: Per-band standard deviation (written into the model card).
        value_range: Raw values mapped to 0 and 1 before standardising (8-bit: [0, 255]).
        options: Keyword arguments of the dataset class for every split (e.g. ``val_tiles``, ``downscale``).
        train_options: Extra keyword arguments for the training split only (e.g. ``samples_per_epoch``).
    """

    name: str = "dubai_aerial"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    crop_size_px: int = 512
    batch_size: int = 8
    num_workers: int = 2
    cutmix_p: float = 0.0
    scales: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5)
    flip_p: float = 0.5
    rot90_p: float = 0.5
    smart_crop_max_ratio: float = 0.75
    mosaic_p: float = 0.25
    colour_jitter: float = 0.0
    norm_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    norm_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    value_range: tuple[float, float] = (0.0, 255.0)
    options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Which architecture to build and how to describe it in the model card.

    Attributes:
        name: Model registry name (see ``engine.models.list_models()``).
        options: Architecture keyword arguments for ``create_model`` besides ``num_classes``.
        pretrained_backbone: Local path of backbone weights (e.g. from ``training.pretrain``); empty = none.
        display_name: Model card name; empty = derived from the model and dataset names.
        description: Model card description.
        license: Licence of the trained weights, written into the model card.
        citation: Papers to cite, written into the model card.
        gsd_m: Ground sampling distance of the training imagery in metres per pixel (0 = unknown).
        tile_size_px: Tile edge for sliding-window validation and the card's default inference tile.
        overlap_px: Overlap between neighbouring tiles for validation and the card's default.
    """

    name: str = "hi_resnet"
    options: dict[str, Any] = field(default_factory=dict)
    pretrained_backbone: str = ""
    display_name: str = ""
    description: str = ""
    license: str = ""
    citation: str = ""
    gsd_m: float = 0.0
    tile_size_px: int = 512
    overlap_px: int = 64


@dataclass
class OptimConfig:
    """AdamW, optionally wrapped in Lookahead.

    Attributes:
        lr: Peak learning rate (reached at the end of warm-up).
        weight_decay: AdamW decoupled weight decay (not applied to biases and norm parameters).
        betas: AdamW betas.
        backbone_lr_mult: Learning-rate multiplier for the model's encoder (its ``encoder_prefixes``: BiCoR-Seg's
            ``encoder.``, Hi-ResNet's trunk; ``backbone.`` for other modules); 1 = one rate.
        lookahead: Wrap AdamW in Lookahead.
        lookahead_k: Lookahead synchronisation period in optimizer steps.
        lookahead_alpha: Lookahead slow-weight step size.
        grad_clip_norm: Clip the global gradient norm to this value (0 = off).
    """

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = 1.0
    lookahead: bool = False
    lookahead_k: int = 5
    lookahead_alpha: float = 0.5
    grad_clip_norm: float = 0.0


@dataclass
class ScheduleConfig:
    """Linear warm-up then cosine decay, evaluated every optimizer step.

    Attributes:
        epochs: Number of passes over the training set.
        warmup_epochs: Length of the linear warm-up, in epochs (fractions allowed).
        min_lr: Learning rate at the end of the cosine.
        steps_per_epoch: Optimizer steps per epoch; 0 = one pass over the training set.
    """

    epochs: int = 30
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    steps_per_epoch: int = 0


@dataclass
class RunConfig:
    """Where outputs go and how the run executes.

    Attributes:
        out_dir: Folder that receives one sub-folder per run.
        name: Run name (the sub-folder); empty = derived from the config file name.
        seed: Seed for Python, NumPy and torch.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: Mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU.
        grad_accum_steps: Micro-batches accumulated per optimizer step.
        max_minutes: Stop training after this many minutes (0 = no limit); the cosine is squeezed to fit.
        max_steps: Stop after this many optimizer steps (0 = no limit; for smoke tests).
        threads: torch intra-op CPU threads (0 = torch's default).
        resume: ``""`` = start fresh, ``"auto"`` = continue from ``last.pt`` in the run folder if present,
            or a checkpoint path.
        val_every_epochs: Validate every N epochs (and always after the last one).
        validate_first: Also validate the untrained model before the first epoch (a baseline row, epoch 0).
        max_val_images: Validate on at most this many images (0 = all).
        val_batch_size: Tiles per forward pass during sliding-window validation.
        stitching: Stitching strategy for sliding-window validation (as in the engine).
        monitor: Validation metric that picks ``best.pt`` (higher is better), e.g. ``miou`` or ``mf1``.
        log_every_steps: Write the training loss to the logs every N optimizer steps.
        progress_bar: Show tqdm progress bars (rank 0 only).
        tensorboard: Write TensorBoard event files.
        plots: Write PNG plots of the curves and the confusion matrix at the end.
        ddp_find_unused: Let DistributedDataParallel tolerate parameters without gradient in a step.
        channels_last: Keep weights and batches in channels-last memory order (about 20 % faster convolutions
            on CPUs with oneDNN; checkpoints are unaffected).
        save_last: Write ``last.pt`` (weights, optimizer and progress, for ``--resume``) after every epoch; a
            fine-tune, which never resumes, turns it off.
    """

    out_dir: str = "runs"
    name: str = ""
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    grad_accum_steps: int = 1
    max_minutes: float = 0.0
    max_steps: int = 0
    threads: int = 0
    resume: str = ""
    val_every_epochs: int = 1
    validate_first: bool = False
    max_val_images: int = 0
    val_batch_size: int = 4
    stitching: str = "gaussian"
    monitor: Literal["miou", "mf1", "oa", "kappa"] = "miou"
    log_every_steps: int = 10
    progress_bar: bool = True
    tensorboard: bool = True
    plots: bool = True
    ddp_find_unused: bool = False
    channels_last: bool = False
    save_last: bool = True


@dataclass
class TrainConfig:
    """The whole training configuration (one section per concern).

    ``loss`` holds keyword arguments of :class:`training.losses.LossConfig` except ``num_classes`` and
    ``ignore_index``, which come from the dataset; its keys and value types are checked against that class.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        """Check cross-field rules that single field types cannot express."""
        self.loss = _check_loss_section(self.loss)
        _require(self.data.crop_size_px > 0, "data.crop_size_px", "must be positive")
        _require(self.data.batch_size >= 1, "data.batch_size", "must be at least 1")
        _require(self.data.num_workers >= 0, "data.num_workers", "must be 0 or more")
        _require(
            self.data.val_split != self.data.test_split,
            "data.val_split",
            f"equals the test split '{self.data.test_split}'; choose checkpoints on a separate validation split",
        )
        for key in ("cutmix_p", "flip_p", "rot90_p", "mosaic_p"):
            _require(0 <= getattr(self.data, key) <= 1, f"data.{key}", "must be a probability in [0, 1]")
        _require(0 <= self.data.colour_jitter < 1, "data.colour_jitter", "must be in [0, 1); 0.2 is typical")
        _require(bool(self.data.scales) and min(self.data.scales) > 0, "data.scales", "must list positive factors")
        _require(
            len(self.data.norm_mean) == len(self.data.norm_std),
            "data.norm_std",
            f"needs one value per band of data.norm_mean ({len(self.data.norm_mean)})",
        )
        _require(self.optim.lr > 0, "optim.lr", "must be positive")
        _require(self.optim.lookahead_k >= 1, "optim.lookahead_k", "must be at least 1")
        _require(0 < self.optim.lookahead_alpha <= 1, "optim.lookahead_alpha", "must be in (0, 1]")
        _require(self.schedule.epochs >= 1, "schedule.epochs", "must be at least 1")
        _require(self.schedule.warmup_epochs >= 0, "schedule.warmup_epochs", "must be 0 or more")
        _require(self.schedule.min_lr >= 0, "schedule.min_lr", "must be 0 or more")
        _require(self.run.grad_accum_steps >= 1, "run.grad_accum_steps", "must be at least 1")
        _require(self.run.max_minutes >= 0, "run.max_minutes", "must be 0 (no limit) or more")
        _require(self.run.val_every_epochs >= 1, "run.val_every_epochs", "must be at least 1")
        _require(self.run.val_batch_size >= 1, "run.val_batch_size", "must be at least 1")
        _require(
            0 <= self.model.overlap_px < self.model.tile_size_px,
            "model.overlap_px",
            f"must be in [0, model.tile_size_px={self.model.tile_size_px})",
        )


_LOSS_KEYS_FROM_DATASET = ("num_classes", "ignore_index")


def _check_loss_section(section: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``loss`` keys and value types against ``training.losses.LossConfig``'s fields."""
    from training.losses import LossConfig  # imported here: it pulls in torch

    hints = typing.get_type_hints(LossConfig)
    valid = [f.name for f in dataclasses.fields(LossConfig) if f.name not in _LOSS_KEYS_FROM_DATASET]
    checked: dict[str, Any] = {}
    for key, value in section.items():
        if key in _LOSS_KEYS_FROM_DATASET:
            raise ConfigError(f"Config key 'loss.{key}' is set from the dataset; remove it from the config.")
        if key not in valid:
            raise ConfigError(f"Unknown config key 'loss.{key}'; valid keys in loss: {', '.join(valid)}.")
        checked[key] = coerce_value(value, hints[key], f"loss.{key}")
    return checked


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"Config key '{key}' {problem}.")


# --- Building dataclasses from plain data, with type checks ---------------------------------------------------


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from nested plain data (e.g. a parsed YAML file)."""
    return build_dataclass(TrainConfig, data, "")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Nested plain dict of the config (tuples become lists), ready for YAML or a checkpoint."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return {str(k): plain(v) for k, v in dataclasses.asdict(config).items()}


def load_config(yaml_path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides and validate the result.

    Args:
        yaml_path: The config file; None starts from the defaults.
        overrides: Dotted ``section.key=value`` strings, applied in order.

    Returns:
        The validated config.

    Raises:
        ConfigError: If the file is missing or not a mapping, or a key or value is invalid.
    """
    data: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist; pass a file from training/configs/.")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"Config file '{path}' is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file '{path}' must be a mapping of sections ({valid_keys(TrainConfig)}).")
        data = loaded
    return resolve_config(data, overrides)


def resolve_config(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """Apply ``key=value`` overrides to nested plain data (e.g. a checkpoint's stored config) and validate it."""
    merged = copy.deepcopy(dict(data))
    for text in overrides:
        path_parts, value = parse_override(text)
        apply_override(TrainConfig, merged, path_parts, value, text)
    return config_from_dict(merged)


def save_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (loadable again with :func:`load_config`)."""
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")

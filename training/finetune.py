"""Fine-tune a model on your own labelled raster: ``python -m training.finetune --raster R --labels L -o M.onnx``.

Reads top to bottom like the run it performs:

1. the base model (BASE_MODEL; empty = the embedded default), or an architecture to train from scratch; the
   raster's bands are matched to the base model's (the same rule as segmentation);
2. chips of the labelled area (:mod:`training.chips`: the chips ``bicorseg:exporttrainingdata`` writes), with a
   spatially separate validation share, in a temporary folder;
3. the trainer of ``python -m training.train`` on those chips (:mod:`training.datasets.chips`), started from the
   base model's weights (:func:`training.base_model.transfer_weights`: the classifier is replaced for classes the
   base model does not have, the encoder keeps its weights), for ``minutes`` (the cosine learning rate is
   squeezed into the budget), validating on whole validation chips through the engine's tile loop, keeping the
   best validation mIoU; the untrained start is validated first, as the baseline;
4. the best weights exported to ONNX with their model card (classes and colours, the raster's bands and resolution,
   normalisation, what they were trained on, validation metrics, the base model's sha256), checked against torch;
   and an HTML report (loss and IoU curves, confusion matrix).

Nothing is written at the output paths before the end: a failed or canceled run leaves no file there.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from numpy.typing import NDArray
from torch import nn

from engine.errors import CanceledError, InvalidInputError, InvalidRasterError, OutputPathError
from engine.export import export_checked
from engine.model_card import ModelCard
from engine.model_file import ModelFile
from engine.progress import NullProgress, ProgressReporter
from engine.raster.bands import BandLayout, match_bands
from training.base_model import BaseModel, WeightTransfer, open_base_model, transfer_weights
from training.checkpoints import load_model
from training.chips import ChipRequest, ChipSet, write_chips
from training.config import TrainConfig, config_from_dict
from training.datasets.chips import ChipDataset
from training.hooks import RunHooks
from training.transforms import IGNORE_INDEX, Normalization

__all__ = ["ARCHITECTURES", "FinetuneRequest", "FinetuneResult", "main", "run_finetune"]

logger = logging.getLogger(__name__)

#: Architectures a model can be trained from scratch with (ARCHITECTURE in QGIS; the plugin's enum strings).
ARCHITECTURES: tuple[str, ...] = ("bicorseg_small", "hi_resnet_small", "bicorseg", "hi_resnet")
#: Optimizer steps between validations.
STEPS_PER_VALIDATION = 25
#: Peak learning rate: fine-tuning starts from trained weights, training from scratch does not.
FINETUNE_LR = 1e-4
SCRATCH_LR = 1e-3
#: Progress-bar shares: chips, then training, then export and report.
_CHIPS_SHARE, _TRAIN_SHARE = 0.05, 0.9


@dataclass(frozen=True)
class FinetuneRequest:
    """One fine-tune (or training from scratch) on a user's labelled raster.

    Attributes:
        chips: Raster, labels, validation, labelled area, tile size (the chips to train on).
        output_model: Destination ``.onnx``.
        report: Destination ``.html`` report; None = beside the model (``<model>.report.html``).
        base_model: BASE_MODEL; None or empty = the embedded default model (when ``architecture`` is None).
        architecture: Train this architecture from scratch instead (one of :data:`ARCHITECTURES`).
        minutes: Time budget of the training loop (validations included), in minutes.
        max_steps: Also stop after this many optimizer steps (0 = no limit; for tests).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: Chips per optimizer step.
        lr: Peak learning rate; None = :data:`FINETUNE_LR` or :data:`SCRATCH_LR`.
        threads: torch CPU threads (0 = torch's default).
        seed: Seed of the sampling and augmentation.
        name: Model name in the card; empty = derived.
    """

    chips: ChipRequest
    output_model: Path
    report: Path | None = None
    base_model: Path | None = None
    architecture: str | None = None
    minutes: float = 20.0
    max_steps: int = 0
    device: str = "auto"
    batch_size: int = 4
    lr: float | None = None
    threads: int = 0
    seed: int = 42
    name: str = ""

    def __post_init__(self) -> None:
        """Check the options that need no file."""
        if Path(self.output_model).suffix.lower() != ".onnx":
            raise InvalidInputError(f"OUTPUT_MODEL '{self.output_model}' must end in .onnx.")
        if self.report is not None and Path(self.report).suffix.lower() not in (".html", ".htm"):
            raise InvalidInputError(f"REPORT '{self.report}' must end in .html.")
        if self.architecture is not None and self.architecture not in ARCHITECTURES:
            raise InvalidInputError(f"ARCHITECTURE '{self.architecture}' is not one of {', '.join(ARCHITECTURES)}.")
        if self.architecture is not None and self.base_model is not None and str(self.base_model).strip():
            raise InvalidInputError(
                "Give BASE_MODEL (fine-tune it) or ARCHITECTURE (train from scratch), not both; clear one of them."
            )
        if not (self.minutes > 0 or self.max_steps > 0) or self.minutes < 0:
            raise InvalidInputError(f"MINUTES must be positive (got {self.minutes}); 5 to 20 minutes is typical.")
        if self.batch_size < 1:
            raise InvalidInputError(f"The batch size must be at least 1, got {self.batch_size}.")

    @property
    def report_path(self) -> Path:
        """Where the HTML report goes."""
        model = Path(self.output_model)
        return Path(self.report) if self.report is not None else model.with_name(model.stem + ".report.html")


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tune produced.

    Attributes:
        model_path: The ONNX model (with its card).
        report_path: The HTML report.
        card: The model card.
        base_name: Name of the base model, or ``from scratch``.
        baseline: Validation scores of the start (epoch 0): the base model with its classifier adapted.
        best: Validation scores of the exported weights.
        steps: Optimizer steps taken.
        train_seconds: Seconds in the training loop.
        device: The torch device used.
        chips: The training chips (classes, pixel counts, validation share).
        notes: What the user was told (reprojection, classifier replaced, classes missing...).
    """

    model_path: Path
    report_path: Path
    card: ModelCard
    base_name: str
    baseline: Mapping[str, float]
    best: Mapping[str, float]
    steps: int
    train_seconds: float
    device: str
    chips: ChipSet
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (the command line prints it)."""
        return {
            "model": str(self.model_path),
            "report": str(self.report_path),
            "base": self.base_name,
            "classes": list(self.card.class_names),
            "steps": self.steps,
            "train_seconds": round(self.train_seconds, 1),
            "device": self.device,
            "validation": self.chips.validation,
            "baseline_val_miou": _finite(self.baseline.get("val_miou")),
            "val_miou": _finite(self.best.get("val_miou")),
            "val_iou": {name: _finite(self.best.get(f"val_iou_{name}")) for name in self.card.class_names},
            "notes": list(self.notes),
        }


def _finite(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else round(float(value), 4)


@dataclass
class _Progress:
    """Turns trainer callbacks into progress fractions and log lines; collects the curves for the report."""

    reporter: ProgressReporter
    budget_s: float
    max_steps: int
    class_names: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)
    running: float | None = None
    steps: list[dict[str, float]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)

    def on_step(self, step: int, loss: float, lr: float) -> None:
        self.running = loss if self.running is None else 0.9 * self.running + 0.1 * loss
        elapsed = time.monotonic() - self.started
        self.steps.append({"step": step, "loss": loss, "running_loss": self.running, "lr": lr, "elapsed_s": elapsed})
        fractions = [elapsed / self.budget_s if self.budget_s > 0 else 0.0]
        if self.max_steps:
            fractions.append(step / self.max_steps)
        self.reporter.set_progress(_CHIPS_SHARE + _TRAIN_SHARE * min(1.0, max(fractions)))
        logger.info(f"step {step}: loss {loss:.4f} (running {self.running:.4f}), lr {lr:.2e}, {elapsed:.0f} s")

    def on_validation(self, row: Mapping[str, Any]) -> None:
        self.validations.append(dict(row))
        ious = ", ".join(f"{name} {_fmt(row.get(f'val_iou_{name}'))}" for name in self.class_names)
        what = "before training" if int(row.get("step", 0)) == 0 else f"after step {int(row.get('step', 0))}"
        logger.info(f"validation {what}: mIoU {_fmt(row.get('val_miou'))}; IoU {ious}")


def _fmt(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"


def run_finetune(request: FinetuneRequest, progress: ProgressReporter | None = None) -> FinetuneResult:
    """Run the fine-tune described by ``request`` (see the module docstring).

    Raises:
        InvalidInputError: For bad input (labels not on the raster, one class, no labelled pixel in the validation
            share, a base model whose bands do not match the raster, ...); the message names the fix.
        CanceledError: If ``progress`` reports that the user canceled; nothing is written.
    """
    progress = progress or NullProgress()
    output, report = Path(request.output_model), request.report_path
    _check_outputs(request.chips.raster, output, report)
    base_file = None if request.architecture is not None else ModelFile.open(request.base_model)
    bands, band_names, dtype = _bands_for(request.chips.raster, base_file)
    base = None if base_file is None else open_base_model(base_file)
    if base is not None:
        logger.info(f"Base model: {base.card.name} ({base.path.name}, sha256 {base.sha256[:12]}...): {base.note}.")
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bicorseg-finetune-") as scratch_dir:
        scratch = Path(scratch_dir)
        chips = write_chips(
            dataclasses.replace(request.chips, bands=bands, band_names=band_names),
            scratch / "chips",
            _Scaled(progress, 0.0, _CHIPS_SHARE),
        )
        notes += chips.notes
        for note in chips.notes:
            logger.info(note)
        logger.info(
            f"{chips.train_chips} training chip(s) ({sum(chips.train_class_px)} labelled px) and {chips.val_chips} "
            f"validation chip(s) ({sum(chips.val_class_px)} px); validation: {chips.validation}."
        )
        normalization = _normalization(base, dtype, scratch / "chips")
        config = _config(request, base, chips, normalization, scratch / "runs")
        tracker = _Progress(progress, request.minutes * 60.0, request.max_steps, chips.scheme.names)
        transfer: list[WeightTransfer] = []

        def prepare(model: nn.Module) -> None:
            if base is not None:
                transfer.append(transfer_weights(model, base, chips.scheme.names))
                logger.info(transfer[-1].summary())

        hooks = RunHooks(prepare_model=prepare, on_step=tracker.on_step, on_validation=tracker.on_validation,
                         is_canceled=progress.is_canceled)  # fmt: skip
        from training.train import run_training

        started = time.monotonic()
        run_dir = run_training(config, hooks)
        train_seconds = time.monotonic() - started
        if transfer and transfer[0].new_classes:
            notes.append(transfer[0].summary())
        if progress.is_canceled():
            raise CanceledError("Training canceled; no model was written.")
        model, best_card = load_model(run_dir / "best.pt")
        best = {k: v for k, v in best_card.metrics.items()}
        baseline = tracker.validations[0] if tracker.validations else {}
        device = str(_device_used(config))
        card = _card(request, base, chips, normalization, dtype, model, best, baseline, tracker, train_seconds, device)
        tmp_model = output.with_name(f".{output.name}.partial-{os.getpid()}")
        tmp_report = report.with_name(f".{report.name}.partial-{os.getpid()}")
        try:
            progress.set_progress(_CHIPS_SHARE + _TRAIN_SHARE)
            export_checked(model, card, tmp_model)
            from training.report import write_report

            confusion = _best_confusion(run_dir)
            write_report(tmp_report, card=card, base=base, chips=chips, steps=tracker.steps,
                         validations=tracker.validations, confusion=confusion, notes=notes,
                         train_seconds=train_seconds, device=device)  # fmt: skip
            if progress.is_canceled():
                raise CanceledError("Training canceled; no model was written.")
            os.replace(tmp_model, output)
            os.replace(tmp_report, report)
        finally:
            tmp_model.unlink(missing_ok=True)
            tmp_report.unlink(missing_ok=True)
    progress.set_progress(1.0)
    steps = int(tracker.steps[-1]["step"]) if tracker.steps else 0
    return FinetuneResult(
        model_path=output,
        report_path=report,
        card=card,
        base_name=base.card.name if base is not None else f"{request.architecture} from scratch",
        baseline={k: v for k, v in baseline.items() if isinstance(v, int | float)},
        best=best,
        steps=steps,
        train_seconds=train_seconds,
        device=device,
        chips=chips,
        notes=tuple(notes),
    )


class _Scaled:
    """A progress reporter that maps 0..1 onto a share of another's bar."""

    def __init__(self, inner: ProgressReporter, start: float, span: float) -> None:
        self._inner, self._start, self._span = inner, start, span

    def set_progress(self, fraction: float) -> None:
        self._inner.set_progress(self._start + self._span * fraction)

    def is_canceled(self) -> bool:
        return self._inner.is_canceled()


def _device_used(config: TrainConfig) -> torch.device:
    from training.distributed import select_device

    return select_device(config.run.device)


def _check_outputs(raster: Path, output: Path, report: Path) -> None:
    for path, what in ((output, "OUTPUT_MODEL"), (report, "REPORT")):
        if Path(path).resolve() == Path(raster).resolve():
            raise OutputPathError(f"{what} '{path}' is the input raster; choose another file.")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(
                f"Cannot create the folder of {what} '{path}' ({exc}); choose a writable one."
            ) from exc
    if Path(output).resolve() == Path(report).resolve():
        raise OutputPathError(f"OUTPUT_MODEL and REPORT are the same file '{output}'; choose two.")


def _bands_for(raster: Path, base: ModelFile | None) -> tuple[tuple[int, ...] | None, tuple[str, ...] | None, str]:
    """Raster bands (1-based, in model order), their names, and the raster's data type."""
    raster = Path(raster)
    if not raster.is_file():
        raise InvalidRasterError(f"Input raster '{raster}' does not exist; check the path.")
    try:
        with rasterio.open(raster) as dataset:
            layout = BandLayout(tuple(ci.name.lower() for ci in dataset.colorinterp),
                                tuple(d or "" for d in dataset.descriptions))  # fmt: skip
            dtypes = dataset.dtypes
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise InvalidRasterError(
            f"Cannot open '{raster}' as a raster ({exc}); give a GeoTIFF or other GDAL raster."
        ) from exc
    if base is None:
        return None, None, str(dtypes[0])
    try:
        bands = match_bands(layout, base.card, raster_name=f"'{raster.name}'")
    except InvalidRasterError as exc:
        raise InvalidInputError(
            f"The base model '{base.path.name}' expects {base.card.num_bands} band(s) "
            f"({', '.join(base.card.input_bands)}) but raster '{raster.name}' has {layout.summary()}: choose a base "
            "model made for these bands, or train from scratch with ARCHITECTURE (--architecture)."
        ) from exc
    return bands, base.card.input_bands, str(dtypes[bands[0] - 1])


def _normalization(base: BaseModel | None, dtype: str, chips_dir: Path) -> Normalization:
    """The base model's normalisation (its value range unless the raster's type differs), or the chips' own."""
    if base is not None:
        card = base.card
        if dtype == card.input_dtype or (dtype == "uint8" and card.input_value_range == (0.0, 255.0)):
            return Normalization.from_card(card)
        low, high = _value_range(chips_dir, dtype)
        logger.warning("The raster is %s but the base model was trained on %s; its values %g..%g are scaled to the "
                       "base model's range.", dtype, card.input_dtype, low, high)  # fmt: skip
        return Normalization(mean=card.norm_mean, std=card.norm_std, value_range=(low, high))
    low, high = _value_range(chips_dir, dtype)
    dataset = ChipDataset(chips_dir, "train")  # write_chips guarantees at least one training chip
    bands = len(dataset.info.band_names)
    total, total_sq = np.zeros(bands, np.float64), np.zeros(bands, np.float64)
    count = 0
    for index in range(min(len(dataset), 64)):
        image = dataset.chip(index)["image"]
        flat = ((image.astype(np.float64) - low) / (high - low)).reshape(image.shape[0], -1)
        total += flat.sum(axis=1)
        total_sq += (flat**2).sum(axis=1)
        count += flat.shape[1]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    return Normalization(mean=tuple(float(m) for m in mean), std=tuple(float(max(s, 1e-3)) for s in std),
                         value_range=(low, high))  # fmt: skip


def _value_range(chips_dir: Path, dtype: str) -> tuple[float, float]:
    """0..255 for 8-bit rasters; otherwise the 0.5-99.5 percentiles of the training chips' values."""
    if dtype == "uint8":
        return 0.0, 255.0
    dataset = ChipDataset(chips_dir, "train")
    values = np.concatenate([dataset.chip(i)["image"].reshape(-1) for i in range(min(len(dataset), 64))])
    low, high = (float(v) for v in np.percentile(values[np.isfinite(values)], [0.5, 99.5]))
    return (low, high) if high > low else (low, low + 1.0)


def _config(
    request: FinetuneRequest, base: BaseModel | None, chips: ChipSet, normalization: Normalization, out_dir: Path
) -> TrainConfig:
    """The trainer's configuration of this fine-tune (a ``training.train`` config; the chips are its dataset)."""
    tile = request.chips.tile_size_px
    architecture = base.card.architecture if base is not None else str(request.architecture)
    options = dict(base.card.architecture_args) if base is not None else {}
    if base is None and len(chips.band_names) != 3:
        options["in_channels"] = len(chips.band_names)
    steps = STEPS_PER_VALIDATION
    epochs = max(1, math.ceil(request.max_steps / steps)) if request.max_steps and request.minutes <= 0 else 100_000
    lr = request.lr or (FINETUNE_LR if base is not None else SCRATCH_LR)
    data = {
        "name": "chips",
        "root": str(chips.folder),
        "crop_size_px": tile,
        "batch_size": request.batch_size,
        "num_workers": 0,  # QGIS runs this in a worker thread: no data-loader processes
        "scales": [0.75, 1.0, 1.25],
        "mosaic_p": 0.0,
        "cutmix_p": 0.0,
        "colour_jitter": 0.1,
        "norm_mean": list(normalization.mean),
        "norm_std": list(normalization.std),
        "value_range": list(normalization.value_range),
        "train_options": {"samples_per_epoch": steps * request.batch_size},
    }
    # Losses average over labelled pixels (GeoSeg's means over all pixels would shrink with sparse labels).
    family_loss = {"geoseg_compat": False} if architecture.startswith("bicorseg") else {}
    return config_from_dict(
        {
            "data": data,
            "model": {
                "name": architecture,
                "options": options,
                "tile_size_px": tile,
                "overlap_px": max(0, tile // 8),
                "gsd_m": chips.gsd_m or 0.0,
            },
            "loss": family_loss,
            "optim": {"lr": lr, "weight_decay": 0.01, "grad_clip_norm": 5.0},
            "schedule": {"epochs": epochs, "steps_per_epoch": steps, "warmup_epochs": 0.4, "min_lr": lr / 100},
            "run": {
                "out_dir": str(out_dir),
                "name": "finetune",
                "seed": request.seed,
                "device": request.device,
                "max_minutes": request.minutes,
                "max_steps": request.max_steps,
                "threads": request.threads,
                "validate_first": True,
                "val_batch_size": 4,
                "log_every_steps": 1,
                "progress_bar": False,
                "tensorboard": False,
                "plots": False,
                "save_last": False,
                "channels_last": request.device != "cuda",
            },
        }
    )


def _best_confusion(run_dir: Path) -> NDArray[np.int64] | None:
    import json

    path = run_dir / "val_metrics.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    matrix = data.get("confusion_matrix")
    return None if matrix is None else np.asarray(matrix, dtype=np.int64)


_CARD_DTYPES = ("uint8", "uint16", "int16", "float32")


def _card(
    request: FinetuneRequest,
    base: BaseModel | None,
    chips: ChipSet,
    normalization: Normalization,
    dtype: str,
    model: nn.Module,
    best: Mapping[str, float],
    baseline: Mapping[str, Any],
    tracker: _Progress,
    train_seconds: float,
    device: str,
) -> ModelCard:
    """The output model's card."""
    raster = Path(request.chips.raster).name
    labels = chips.manifest.get("labels", {})
    tile = request.chips.tile_size_px
    steps = int(tracker.steps[-1]["step"]) if tracker.steps else 0
    best_step = max((int(r.get("step", 0)) for r in tracker.validations if r.get("val_miou") == best.get("val_miou")),
                    default=steps)  # fmt: skip
    per_class = "; ".join(f"{n}: {t} train / {v} validation px" for n, t, v in
                          zip(chips.scheme.names, chips.train_class_px, chips.val_class_px, strict=True))  # fmt: skip
    start = (f"fine-tuned from {base.card.name} ({base.path.name}, sha256 {base.sha256})" if base is not None
             else f"trained from scratch ({request.architecture})")  # fmt: skip
    gsd = f"{chips.gsd_m:.3g} m" if chips.gsd_m else "unknown resolution"
    training_data = (
        f"Raster '{raster}' ({chips.manifest['raster_size_px'][0]} x {chips.manifest['raster_size_px'][1]} px, "
        f"{gsd}, bands {', '.join(chips.band_names)}); labels '{labels.get('source', '')}'"
        + (f", field '{labels['class_field']}'" if labels.get("class_field") else "")
        + f" ({per_class}); validation: {chips.validation}; {start}; {steps} optimizer steps in "
        f"{train_seconds / 60:.1f} min on {device}; weights of the best validation (step {best_step})."
    )
    metrics = dict(best)
    if baseline.get("val_miou") is not None and math.isfinite(float(baseline["val_miou"])):
        metrics["baseline_val_miou"] = round(float(baseline["val_miou"]), 4)
    names = chips.scheme.names
    if base is not None:
        name = request.name or f"{base.card.name}, fine-tuned on {raster}"
        options = dict(base.card.architecture_args)
        license_text = (
            f"Derived from '{base.card.name}' ({base.card.license or 'see its card'}); trained on the user's data."
        )
        citation = base.card.citation
        overlap = max(tile // 8, round(base.card.overlap_px * tile / max(base.card.tile_size_px, 1)))
    else:
        name = request.name or f"{request.architecture} trained on {raster}"
        options = {"in_channels": len(chips.band_names)} if len(chips.band_names) != 3 else {}
        license_text = "Trained by the user on their own data."
        citation = ""
        overlap = tile // 8
    return ModelCard(
        name=name,
        architecture=base.card.architecture if base is not None else str(request.architecture),
        class_names=names,
        class_colors=chips.scheme.colors,
        architecture_args=options,
        input_bands=chips.band_names,
        input_dtype=dtype if dtype in _CARD_DTYPES else "float32",
        input_value_range=normalization.value_range,
        norm_mean=normalization.mean,
        norm_std=normalization.std,
        ignore_index=IGNORE_INDEX,
        gsd_m=chips.gsd_m,
        tile_size_px=tile,
        overlap_px=min(overlap, tile - 1),
        size_divisor_px=int(getattr(model, "size_divisor_px", 32)),
        description=f"Land cover ({', '.join(names)}) for '{raster}' and imagery like it; {start}.",
        license=license_text,
        citation=citation,
        training_data=training_data,
        metrics=metrics,
        base_model_sha256=base.sha256 if base is not None else "",
    )


# --- command line -----------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--raster", required=True, type=Path, help="input raster (GeoTIFF, VRT, ...)")
    parser.add_argument("--labels", required=True, type=Path, help="label polygons (GeoPackage, ...) or class raster")
    parser.add_argument("--class-field", default=None, help="field of --labels holding each polygon's class")
    parser.add_argument("-o", "--output", required=True, type=Path, help="destination .onnx model")
    parser.add_argument("--report", type=Path, default=None, help="HTML report (default: <model>.report.html)")
    parser.add_argument("--base-model", type=Path, default=None, help="model to fine-tune (default: the embedded one)")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default=None,
                        help="train this architecture from scratch instead of fine-tuning")  # fmt: skip
    parser.add_argument("--validation", type=Path, default=None,
                        help="validation polygons: with --class-field (labels) or without it (areas); "
                        "default: a spatially separate 20 %% of the labels")  # fmt: skip
    parser.add_argument("--labeled-area", type=Path, default=None,
                        help="polygons inside which unlabelled pixels are --background-class")  # fmt: skip
    parser.add_argument("--background-class", default=None, help="class of those pixels (default 'background')")
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget (default 20)")
    parser.add_argument("--max-steps", type=int, default=0, help="also stop after this many optimizer steps")
    parser.add_argument("--tile-size", type=int, default=256, help="chip and tile edge in pixels (default 256)")
    parser.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring chips (default 32)")
    parser.add_argument("--batch-size", type=int, default=4, help="chips per optimizer step (default 4)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate (default {FINETUNE_LR:g} to fine-tune, {SCRATCH_LR:g} from scratch)")  # fmt: skip
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


class _LogProgress:
    """Command-line progress: messages to the log; Ctrl-C cancels."""

    def set_progress(self, fraction: float) -> None:
        """Progress is in the step lines."""

    def is_canceled(self) -> bool:
        """Ctrl-C interrupts the process directly."""
        return False

    def log(self, message: str) -> None:
        """Log the line."""
        logger.info("%s", message)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: prints the summary as JSON; exit code 2 for bad input."""
    from training.chips import request_from_args
    from training.command import run_json_command

    args = _parse_args(argv)

    def action() -> dict[str, Any]:
        request = FinetuneRequest(
            chips=request_from_args(args),
            output_model=args.output,
            report=args.report,
            base_model=args.base_model,
            architecture=args.architecture,
            minutes=args.minutes,
            max_steps=args.max_steps,
            device=args.device,
            batch_size=args.batch_size,
            lr=args.lr,
            threads=args.threads,
            seed=args.seed,
        )
        return run_finetune(request, _LogProgress()).summary()

    return run_json_command(action)


if __name__ == "__main__":
    raise SystemExit(main())

"""PNG plots of a run: loss curves, validation metric curves and the confusion matrix (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .run_log import read_csv

__all__ = ["plot_class_iou_curves", "plot_confusion_matrix", "plot_loss_curves", "plot_metric_curves", "plot_run"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on training servers; must be chosen before pyplot is imported
    with warnings.catch_warnings():
        # A system-wide matplotlib beside the venv's makes pyplot warn that 3-D axes are unavailable; unused here.
        warnings.filterwarnings("ignore", message="Unable to import Axes3D")
        import matplotlib.pyplot as plt

    return plt


def _series(rows: Sequence[Mapping[str, float]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    points = [(r[x_key], r[y_key]) for r in rows if y_key in r and not math.isnan(r[y_key]) and x_key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_loss_curves(steps: Sequence[Mapping[str, float]], epochs: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Training loss per logged step (thin) and per epoch (markers), and validation loss, against the step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    x, y = _series(steps, "step", "loss")
    if x:
        ax.plot(x, y, linewidth=0.8, alpha=0.6, marker="." if len(x) < 50 else None, label="train loss (steps)")
    x, y = _series(epochs, "step", "train_loss")
    if x:
        ax.plot(x, y, marker="o", label="train loss (epoch mean)")
    x, y = _series(epochs, "step", "val_loss")
    if x:
        ax.plot(x, y, marker="s", label="validation cross-entropy (whole images)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training and validation loss")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_metric_curves(epochs: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Validation mIoU, mF1, OA and kappa against the epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("val_miou", "val_mf1", "val_oa", "val_kappa"):
        x, y = _series(epochs, "epoch", key)
        if x:
            ax.plot(x, y, marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("score")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Validation metrics (sliding window on whole images)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: ArrayLike, class_names: Sequence[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows = reference, columns = prediction) with the percentages written in."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    row_sums = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.0 * k + 2.0))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of reference pixels")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title or "Confusion matrix")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(run_dir: Path, confusion: ArrayLike | None = None, class_names: Sequence[str] = ()) -> list[Path]:
    """Write ``loss.png``, ``metrics.png`` and (when given) ``confusion_matrix.png`` into a run folder."""
    epochs = read_csv(run_dir / "metrics.csv")
    steps = read_csv(run_dir / "steps.csv")
    written = [
        plot_loss_curves(steps, epochs, run_dir / "loss.png"),
        plot_metric_curves(epochs, run_dir / "metrics.png"),
    ]
    if confusion is not None and class_names:
        written.append(plot_confusion_matrix(confusion, class_names, run_dir / "confusion_matrix.png",
                                             "Validation confusion matrix (best checkpoint)"))  # fmt: skip
    return written


def plot_class_iou_curves(epochs: Sequence[Mapping[str, float]], class_names: Sequence[str], path: Path) -> Path:
    """Validation IoU of every class (thin) and mIoU (thick) against the optimizer step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in class_names:
        x, y = _series(epochs, "step", f"val_iou_{name}")
        if x:
            ax.plot(x, y, marker=".", linewidth=1.0, label=name)
    x, y = _series(epochs, "step", "val_miou")
    if x:
        ax.plot(x, y, marker="o", linewidth=2.5, color="black", label="mIoU")
    ax.set_xlabel("optimizer step (0 = before training)")
    ax.set_ylabel("IoU")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Validation IoU per class")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""The HTML report of a fine-tune: what was trained on, the loss and IoU curves, the confusion matrix, the scores.

One self-contained file (the figures are embedded PNGs), readable in any browser and in QGIS's result viewer.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from engine.model_card import ModelCard
from training.plots import plot_class_iou_curves, plot_confusion_matrix, plot_loss_curves

if TYPE_CHECKING:
    from training.base_model import BaseModel
    from training.chips import ChipSet

__all__ = ["write_report"]

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #555; vertical-align: middle; }
img { max-width: 100%; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{"n/a" if not math.isfinite(value) else f"{value:.3f}"}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _value(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    return float(value) if isinstance(value, int | float) else math.nan


def write_report(
    path: Path,
    *,
    card: ModelCard,
    base: BaseModel | None,
    chips: ChipSet,
    steps: Sequence[Mapping[str, float]],
    validations: Sequence[Mapping[str, Any]],
    confusion: NDArray[np.int64] | None,
    notes: Sequence[str],
    train_seconds: float,
    device: str,
) -> Path:
    """Write the report of one fine-tune to ``path``.

    Args:
        path: Destination ``.html``.
        card: The output model's card.
        base: The base model (None when trained from scratch).
        chips: The training chips.
        steps: One row per optimizer step (``step``, ``loss``, ``running_loss``, ``lr``).
        validations: One row per validation (``step``, ``val_miou``, ``val_iou_<class>``, ...); the first is the
            start (step 0).
        confusion: Validation confusion matrix of the exported weights (rows = reference).
        notes: Messages the run gave.
        train_seconds: Seconds in the training loop.
        device: The torch device.
    """
    names = card.class_names
    epochs = [{"step": float(r.get("step", 0)), **{k: v for k, v in r.items() if isinstance(v, int | float)}}
              for r in validations]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bicorseg-report-") as scratch_dir:
        scratch = Path(scratch_dir)
        figures = [
            _png(plot_loss_curves(steps, epochs, scratch / "loss.png")),
            _png(plot_class_iou_curves(epochs, names, scratch / "iou.png")),
        ]
        if confusion is not None and int(np.asarray(confusion).sum()) > 0:
            figures.append(_png(plot_confusion_matrix(confusion, names, scratch / "confusion.png",
                                                      "Validation confusion matrix (exported weights)")))  # fmt: skip
    start = validations[0] if validations else {}
    best = card.metrics
    classes = "".join(
        f'<tr><td>{i}</td><td><span class="swatch" style="background:{c}"></span> {html.escape(n)}</td>'
        f'<td class="num">{t}</td><td class="num">{v}</td>'
        f"{_cell(_value(start, f'val_iou_{n}'))}{_cell(float(best.get(f'val_iou_{n}', math.nan)))}</tr>"
        for i, (n, c, t, v) in enumerate(
            zip(names, card.class_colors, chips.train_class_px, chips.val_class_px, strict=True)
        )
    )
    start_label = "base model" if base is not None else "untrained"
    summary = _table(
        ["", "value"],
        [
            ["model", card.name],
            ["architecture", card.architecture],
            ["start", f"{base.card.name} ({base.path.name}, sha256 {base.sha256})" if base else "from scratch"],
            ["raster", Path(chips.manifest["raster"]).name],
            ["bands", ", ".join(card.input_bands)],
            ["resolution", f"{card.gsd_m:.3g} m" if card.gsd_m else "unknown"],
            ["validation", chips.validation],
            ["chips", f"{chips.train_chips} training, {chips.val_chips} validation ({card.tile_size_px} px)"],
            ["optimizer steps", len(steps)],
            ["training time", f"{train_seconds / 60:.1f} min on {device}"],
            [f"validation mIoU, {start_label}", _value(start, "val_miou")],
            ["validation mIoU, exported", float(best.get("val_miou", math.nan))],
        ],
    )
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes) or "<li>none</li>"
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(card.name)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(card.name)}</h1>
{summary}
<h2>Classes</h2>
<table><tr><th>index</th><th>class</th><th>training px</th><th>validation px</th>
<th>IoU, {start_label}</th><th>IoU, exported</th></tr>{classes}</table>
<h2>Curves</h2>
{"".join(f"<p>{figure}</p>" for figure in figures)}
<h2>Notes</h2>
<ul>{notes_html}</ul>
<h2>Training data (model card)</h2>
<p>{html.escape(card.training_data)}</p>
<p>The validation scores come from pixels the model was not trained on; the same pixels chose the exported step,
so they are a little optimistic: score the model on other polygons (Evaluate segmentation) for an unbiased
number.</p>
</body></html>
"""
    Path(path).write_text(document, encoding="utf-8")
    return Path(path)

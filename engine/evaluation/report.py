"""Evaluation reports: JSON, CSV or HTML, chosen by the file suffix, written atomically.

The three formats carry the same scores: the JSON is :meth:`SegmentationMetrics.to_dict` with NaN written as
``null`` (strict JSON); the CSV has one row per class plus the means, OA and kappa; the HTML adds the confusion
matrix as a table. ``bicorseg:evaluatesegmentation`` and ``python -m engine evaluate`` write them through
:func:`write_report`, so both produce the same bytes.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import OutputPathError
from .metrics import SegmentationMetrics

__all__ = ["REPORT_SUFFIXES", "render_report", "report_dict", "write_report"]

#: Suffixes with their own format; any other suffix gets HTML.
REPORT_SUFFIXES = (".json", ".csv", ".html")


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def report_dict(metrics: SegmentationMetrics) -> dict[str, Any]:
    """The JSON report as a dict: the means, OA, kappa, per-class scores and the matrix; NaN becomes None."""
    summary = metrics.to_dict()
    for key in ("miou", "mf1", "oa", "kappa"):
        summary[key] = _finite(summary[key])
    for scores in summary["per_class"].values():
        for key in ("iou", "f1", "precision", "recall"):
            scores[key] = _finite(scores[key])
    return summary


def render_report(metrics: SegmentationMetrics, suffix: str) -> str:
    """The report text for a file suffix: ``.json``, ``.csv``, anything else HTML."""
    suffix = suffix.lower()
    if suffix == ".json":
        return json.dumps(report_dict(metrics), indent=2)
    if suffix == ".csv":
        return _csv_report(metrics)
    return _html_report(metrics)


def write_report(metrics: SegmentationMetrics, path: Path) -> Path:
    """Write the report in the format named by the suffix of ``path``; nothing is left there on failure.

    The text goes to a temporary file in the same folder first and is renamed onto ``path`` when complete.
    Missing parent folders are created.

    Raises:
        OutputPathError: If the folder cannot be created or written.
    """
    path = Path(path)
    text = render_report(metrics, path.suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputPathError(f"Cannot write the report '{path}' ({exc}); choose a writable folder.") from exc
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temp, 0o644)  # mkstemp makes the file private to its owner; a report is an ordinary file
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(exc, OSError):
            raise OutputPathError(f"Cannot write the report '{path}' ({exc}); choose a writable path.") from exc
        raise
    return path


def _csv_report(metrics: SegmentationMetrics) -> str:
    lines = ["class_index,class_name,iou,f1,precision,recall,support_px"]
    for i, name in enumerate(metrics.class_names):
        lines.append(
            f"{i},{name},{metrics.iou[i]:.6f},{metrics.f1[i]:.6f},{metrics.precision[i]:.6f},"
            f"{metrics.recall[i]:.6f},{metrics.support_px[i]}"
        )
    lines.append(f"mean,,{metrics.miou:.6f},{metrics.mf1:.6f},,,{metrics.pixel_count}")
    lines.append(f"overall_accuracy,,{metrics.oa:.6f},,,,")
    lines.append(f"kappa,,{metrics.kappa:.6f},,,,")
    return "\n".join(lines) + "\n"


def _html_report(metrics: SegmentationMetrics) -> str:
    names = [html.escape(n) for n in metrics.class_names]
    rows = "".join(
        f"<tr><td>{name}</td><td>{metrics.iou[i]:.4f}</td><td>{metrics.f1[i]:.4f}</td>"
        f"<td>{metrics.precision[i]:.4f}</td><td>{metrics.recall[i]:.4f}</td><td>{metrics.support_px[i]}</td></tr>"
        for i, name in enumerate(names)
    )
    header = "".join(f"<th>{n}</th>" for n in names)
    matrix = "".join(
        f"<tr><th>{names[i]}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for i, row in enumerate(metrics.confusion.tolist())
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Segmentation evaluation</title></head><body>"
        "<h1>Segmentation evaluation</h1>"
        f"<p>mIoU {metrics.miou:.4f} &middot; mF1 {metrics.mf1:.4f} &middot; overall accuracy {metrics.oa:.4f} "
        f"&middot; kappa {metrics.kappa:.4f} &middot; {metrics.pixel_count} pixels scored</p>"
        "<table border='1'><tr><th>class</th><th>IoU</th><th>F1</th><th>precision</th><th>recall</th>"
        f"<th>reference pixels</th></tr>{rows}</table>"
        "<h2>Confusion matrix (rows: reference, columns: prediction)</h2>"
        f"<table border='1'><tr><th></th>{header}</tr>{matrix}</table></body></html>"
    )

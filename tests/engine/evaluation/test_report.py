"""Reports: strict JSON, CSV rows and HTML tables from one confusion matrix, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import OutputPathError
from engine.evaluation import SegmentationMetrics, report_dict, write_report
from engine.evaluation import report as report_module

# rows = reference, columns = prediction; class "c<&>" never occurs, so its scores are NaN
CM = np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]], dtype=np.int64)
NAMES = ("a", "b", "c<&>")


@pytest.fixture
def metrics() -> SegmentationMetrics:
    return SegmentationMetrics.from_confusion(CM, NAMES)


def test_json_report_is_strict_json_with_nan_as_null(tmp_path: Path, metrics: SegmentationMetrics) -> None:
    path = write_report(metrics, tmp_path / "deep" / "r.json")  # missing folders are created

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in strict JSON")

    report = json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)
    assert report == report_dict(metrics)
    assert report["confusion_matrix"] == CM.tolist()
    assert report["per_class"]["c<&>"]["iou"] is None
    # a: TP 3, FN 1 -> IoU 3/4; b: TP 4, FP 1 -> IoU 4/5; the mean skips the undefined class
    assert report["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert report["oa"] == pytest.approx(7 / 8)


def test_csv_report_has_one_row_per_class_then_the_means(tmp_path: Path, metrics: SegmentationMetrics) -> None:
    lines = write_report(metrics, tmp_path / "r.CSV").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "class_index,class_name,iou,f1,precision,recall,support_px"
    assert lines[1] == "0,a,0.750000,0.857143,1.000000,0.750000,4"
    assert lines[2] == "1,b,0.800000,0.888889,0.800000,1.000000,4"
    assert lines[3] == "2,c<&>,nan,nan,nan,nan,0"
    assert lines[4] == f"mean,,{(0.75 + 0.8) / 2:.6f},{(6 / 7 + 8 / 9) / 2:.6f},,,8"
    assert lines[5:] == ["overall_accuracy,,0.875000,,,,", f"kappa,,{metrics.kappa:.6f},,,,"]


def test_html_is_the_default_and_escapes_class_names(tmp_path: Path, metrics: SegmentationMetrics) -> None:
    text = write_report(metrics, tmp_path / "r.txt").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "c&lt;&amp;&gt;" in text and "c<&>" not in text
    assert "<tr><th>a</th><td>3</td><td>1</td><td>0</td></tr>" in text


def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, metrics: SegmentationMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: object, dst: object) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(report_module.os, "replace", refuse)
    with pytest.raises(OutputPathError, match=r"Cannot write the report .*choose a writable path"):
        write_report(metrics, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_existing_report_is_replaced_whole(tmp_path: Path, metrics: SegmentationMetrics) -> None:
    path = tmp_path / "r.json"
    path.write_text("old " * 10_000, encoding="utf-8")
    write_report(metrics, path)
    assert json.loads(path.read_text(encoding="utf-8"))["pixel_count"] == 8
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]

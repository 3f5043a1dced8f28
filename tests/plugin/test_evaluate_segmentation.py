"""bicorseg:evaluatesegmentation against a hand-counted confusion matrix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from qgis.core import QgsProcessingException
from rasterio.transform import from_origin

from .conftest import CLASS_NAMES, REPO

pytestmark = pytest.mark.qgis
ALG = "bicorseg:evaluatesegmentation"

PRED = np.array([[0, 0, 1, 1], [0, 1, 1, 2], [2, 2, 2, 255], [0, 1, 2, 2]], dtype=np.uint8)
REF = np.array([[0, 0, 1, 1], [0, 0, 1, 2], [2, 1, 2, 2], [0, 1, 2, 9]], dtype=np.uint8)
# Pixels with prediction 255 (nodata) or reference 9 (ignored) are not scored; counted by hand from the arrays:
CONFUSION = [[4, 1, 0], [0, 4, 1], [0, 0, 4]]
IOU = (4 / 5, 4 / 6, 4 / 5)
OA = 12 / 14
KAPPA = 103 / 131  # chance agreement (4*5 + 5*5 + 5*4) / 14**2 = 65/196


def write(path, array, categories=None, nodata=None):
    profile = {"driver": "GTiff", "height": array.shape[0], "width": array.shape[1], "count": 1, "dtype": "uint8",
                   "crs": "EPSG:32640", "transform": from_origin(500_000, 2_800_000, 1, 1), "nodata": nodata}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
    if categories:
        from osgeo import gdal

        dataset = gdal.Open(str(path), gdal.GA_Update)
        dataset.GetRasterBand(1).SetCategoryNames(list(categories))
        dataset = None
    return path


@pytest.fixture
def pair(tmp_path):
    return (
        write(tmp_path / "pred.tif", PRED, categories=CLASS_NAMES, nodata=255),
        write(tmp_path / "ref.tif", REF),
    )


def test_json_report_and_outputs_match_the_hand_counted_matrix(tmp_path, pair, run_alg):
    pred, ref = pair
    result = run_alg(
        ALG, {"PREDICTION": str(pred), "REFERENCE": str(ref), "IGNORE_VALUE": 9, "OUTPUT": str(tmp_path / "r.json")}
    )
    assert result["MIOU"] == pytest.approx(sum(IOU) / 3)
    assert result["OA"] == pytest.approx(OA)
    assert result["KAPPA"] == pytest.approx(KAPPA)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["confusion_matrix"] == CONFUSION
    assert list(report["per_class"]) == list(CLASS_NAMES)  # names from the prediction's categories
    assert [report["per_class"][n]["iou"] for n in CLASS_NAMES] == pytest.approx(list(IOU))


def test_class_names_come_from_the_model_card_and_html_is_the_default(tmp_path, pair, tiny_model, run_alg):
    _pred, ref = pair
    plain_pred = write(tmp_path / "plain.tif", PRED, nodata=255)
    result = run_alg(
        ALG,
        {"PREDICTION": str(plain_pred), "REFERENCE": str(ref), "IGNORE_VALUE": 9, "MODEL": str(tiny_model),
         "OUTPUT": str(tmp_path / "r.html")},
    )  # fmt: skip
    text = (tmp_path / "r.html").read_text()
    assert all(name in text for name in CLASS_NAMES)
    assert result["OA"] == pytest.approx(OA)


def test_rasters_of_different_sizes_are_refused_with_the_fix(tmp_path, pair, run_alg):
    pred, _ = pair
    other = write(tmp_path / "other.tif", np.zeros((5, 4), dtype=np.uint8))
    with pytest.raises(QgsProcessingException, match="warp"):
        run_alg(ALG, {"PREDICTION": str(pred), "REFERENCE": str(other), "OUTPUT": str(tmp_path / "r.json")})


def test_processing_and_the_engine_command_line_write_the_same_json(tmp_path, pair, run_alg):
    pred, ref = pair
    from_qgis, from_cli = tmp_path / "qgis.json", tmp_path / "cli.json"
    run_alg(ALG, {"PREDICTION": str(pred), "REFERENCE": str(ref), "IGNORE_VALUE": 9, "OUTPUT": str(from_qgis)})
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "evaluate", str(pred), str(ref), "--ignore", "9", "-o", str(from_cli), "-q"],
        check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert from_cli.read_bytes() == from_qgis.read_bytes()
    assert json.loads(from_cli.read_text())["confusion_matrix"] == CONFUSION

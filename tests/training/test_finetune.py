"""python -m training.finetune: a base model's weights, the user's labels, an ONNX model with its card and a report."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from engine.errors import CanceledError, InvalidInputError
from engine.export import export_onnx
from engine.model_card import ModelCard
from engine.model_file import ModelFile
from engine.models import create_model
from training.base_model import open_base_model, transfer_weights
from training.chips import ChipRequest
from training.finetune import ARCHITECTURES, FinetuneRequest, main, run_finetune
from training.labels import LabelFeature, PolygonLabels

from .labelled_raster import NAMES, class_map, trace, write_labels, write_raster

REPO = Path(__file__).resolve().parents[2]
TINY = {"backbone": "atto", "embed_dim": 32}


def _card(names=("water", "trees", "soil"), bands=("red", "green", "blue")) -> ModelCard:
    args = TINY if len(bands) == 3 else {**TINY, "in_channels": len(bands)}
    return ModelCard(name="tiny base", architecture="bicorseg_small", class_names=names,
                     class_colors=("#0000ff", "#00ff00", "#996633")[: len(names)], architecture_args=args,
                     input_bands=bands, norm_mean=(0.5,) * len(bands), norm_std=(0.25,) * len(bands), gsd_m=1.0,
                     tile_size_px=64, overlap_px=8)  # fmt: skip


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("bicorseg_small", num_classes=3, **TINY)
    path = tmp_path_factory.mktemp("base") / "base.onnx"
    export_onnx(model, _card(), path)
    return path


@pytest.fixture
def scene(tmp_path):
    classes = class_map(96, 96)
    raster = write_raster(tmp_path / "raster.tif", classes)
    labels = write_labels(tmp_path / "labels.gpkg", trace(classes))
    return raster, labels, classes


def _request(raster, labels_path, tmp_path, **changes):
    fields = {
        "chips": None
        if labels_path is None
        else ChipRequest(raster, _read(labels_path), tile_size_px=64, overlap_px=16),
        "output_model": tmp_path / "out" / "model.onnx",
        "minutes": 0.0,
        "max_steps": 2,
        "batch_size": 2,
        "device": "cpu",
        "threads": 1,
    }
    fields.update(changes)
    return FinetuneRequest(**fields)


_ATTACHED: list[logging.Handler] = []


class _Log(logging.Handler):
    """The run's progress reporter, and a handler of the training package's log (where its messages go)."""

    def __init__(self, cancel_after_steps: int | None = None):
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []
        self.fractions: list[float] = []
        self.cancel_after = cancel_after_steps
        package = logging.getLogger("training")
        package.addHandler(self)
        package.setLevel(logging.INFO)
        _ATTACHED.append(self)

    def emit(self, record):
        self.lines.append(record.getMessage())

    def set_progress(self, fraction):
        self.fractions.append(fraction)

    def is_canceled(self):
        steps = sum(1 for line in self.lines if line.startswith("step "))
        return self.cancel_after is not None and steps >= self.cancel_after


@pytest.fixture(autouse=True)
def _detach_logs():
    yield
    package = logging.getLogger("training")
    for handler in _ATTACHED:
        package.removeHandler(handler)
    _ATTACHED.clear()
    package.setLevel(logging.NOTSET)


def test_fine_tune_writes_an_onnx_model_with_its_card_and_a_report(scene, base_model, tmp_path):
    raster, labels, _ = scene
    log = _Log()
    result = run_finetune(_request(raster, labels, tmp_path, base_model=base_model), log)
    model = ModelFile.open(result.model_path)
    card = model.card
    assert card.class_names == tuple(sorted(NAMES))  # the labels' classes, not the base model's
    assert card.input_bands == ("red", "green", "blue") and card.gsd_m == pytest.approx(1.0)
    assert card.norm_mean == (0.5, 0.5, 0.5)  # the base model's normalisation
    assert card.base_model_sha256 == ModelFile.open(base_model).sha256
    assert card.architecture == "bicorseg_small" and dict(card.architecture_args) == TINY
    assert "val_miou" in card.metrics and "baseline_val_miou" in card.metrics
    assert "raster.tif" in card.training_data and "labels.gpkg" in card.training_data
    assert "held out automatically" in card.training_data
    # per-step progress with the running loss, and every validation's per-class IoU
    steps = [line for line in log.lines if line.startswith("step ")]
    assert len(steps) == 2 and all("running" in line for line in steps)
    validations = [line for line in log.lines if line.startswith("validation ")]
    assert len(validations) == 2 and all(all(name in line for name in NAMES) for line in validations)
    assert any("classifier is replaced" in line and "trees" in line for line in log.lines)
    assert log.fractions == sorted(log.fractions) and log.fractions[-1] == 1.0
    report = result.report_path.read_text()
    assert result.report_path == tmp_path / "out" / "model.report.html"
    assert report.count("data:image/png;base64,") == 3 and "IoU, exported" in report and card.name in report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model.report.html"]


def test_classes_the_base_model_knows_keep_their_classifier_rows(base_model):
    base = open_base_model(base_model)
    assert base.untrained == ("aux_classifier.weight",)
    assert torch.equal(base.state_dict["aux_classifier.weight"], base.state_dict["classifier.weight"])
    model = create_model("bicorseg_small", num_classes=3, **TINY)
    fresh = model.state_dict()["class_embed"].clone()
    transfer = transfer_weights(model, base, ("trees", "roofs", "water"))
    assert transfer.kept_classes == ("trees", "water") and transfer.new_classes == ("roofs",)
    embed = model.state_dict()["class_embed"]
    assert torch.equal(embed[0], base.state_dict["class_embed"][1])  # trees was the base's class 1
    assert torch.equal(embed[2], base.state_dict["class_embed"][0])  # water was its class 0
    assert torch.equal(embed[1], fresh[1])  # roofs starts fresh
    assert torch.equal(model.state_dict()["classifier.weight"], base.state_dict["classifier.weight"])


def test_training_from_scratch_takes_the_rasters_bands_and_statistics(tmp_path):
    classes = class_map(64, 64)
    raster = write_raster(tmp_path / "four.tif", classes, bands=4)
    labels = write_labels(tmp_path / "labels.gpkg", trace(classes))
    result = run_finetune(_request(raster, labels, tmp_path, architecture="bicorseg_small", max_steps=1,
                                   chips=ChipRequest(raster, _read(labels), tile_size_px=64, overlap_px=0)))  # fmt: skip
    card = result.card
    assert card.num_bands == 4 and card.input_bands == ("band_1", "band_2", "band_3", "band_4")
    assert dict(card.architecture_args) == {"in_channels": 4} and card.base_model_sha256 == ""
    with rasterio.open(raster) as src:
        data = src.read().astype(np.float64) / 255.0
    assert card.norm_mean == pytest.approx(tuple(data.reshape(4, -1).mean(axis=1)), abs=0.02)


def _read(path):
    from training.chips import read_label_source

    return read_label_source(path, "class")


def test_a_base_model_whose_bands_do_not_match_is_refused(tmp_path, base_model):
    classes = class_map(64, 64)
    raster = write_raster(tmp_path / "two.tif", classes[:, :], bands=3)
    four = tmp_path / "four_band_base.onnx"
    export_onnx(create_model("bicorseg_small", num_classes=3, in_channels=4, **TINY),
                _card(bands=("red", "green", "blue", "nir")), four)  # fmt: skip
    labels = write_labels(tmp_path / "labels.gpkg", trace(classes))
    with pytest.raises(InvalidInputError, match="expects 4 band") as error:
        run_finetune(_request(raster, labels, tmp_path, base_model=four))
    assert "four_band_base.onnx" in str(error.value) and "ARCHITECTURE" in str(error.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cancel_stops_after_the_current_step_and_writes_nothing(scene, base_model, tmp_path):
    raster, labels, _ = scene
    log = _Log(cancel_after_steps=1)
    with pytest.raises(CanceledError):
        run_finetune(_request(raster, labels, tmp_path, base_model=base_model, max_steps=50), log)
    assert sum(1 for line in log.lines if line.startswith("step ")) == 1
    assert not any((tmp_path / "out").iterdir())


def test_labels_in_another_crs_are_reprojected_and_said(tmp_path, base_model):
    import rasterio.warp

    classes = class_map(96, 96)
    raster = write_raster(tmp_path / "raster.tif", classes)
    features = tuple(LabelFeature(rasterio.warp.transform_geom("EPSG:32640", "EPSG:4326", g), v)
                     for g, v in trace(classes))  # fmt: skip
    labels = PolygonLabels(features, "EPSG:4326", "wgs84 labels", "class")
    log = _Log()
    result = run_finetune(_request(raster, None, tmp_path, base_model=base_model, max_steps=1,
                                   chips=ChipRequest(raster, labels, tile_size_px=64, overlap_px=0)), log)  # fmt: skip
    assert any("reprojected" in line and "EPSG:4326" in line for line in log.lines)
    assert any("reprojected" in note for note in result.notes)


def test_the_architecture_enum_of_the_plugin_is_the_trainers():
    source = (REPO / "bicorseg_qgis" / "algorithms" / "train_model.py").read_text()
    line = next(line for line in source.splitlines() if line.startswith("ARCHITECTURES = "))
    assert (
        line
        == f"ARCHITECTURES = (FROM_BASE_MODEL, {', '.join(repr(a).replace(chr(39), chr(34)) for a in ARCHITECTURES)})"
    )


def test_command_line_bad_input_is_one_line_and_exit_2(scene, tmp_path, base_model):
    raster, labels, _ = scene
    far = write_labels(tmp_path / "far.gpkg", [(g, v) for g, v in trace(class_map(96, 96))], crs="EPSG:32633")
    cases = [
        (["--labels", str(far), "--class-field", "class"], "do not overlap the raster"),
        (["--labels", str(labels), "--class-field", "nope"], "no field 'nope'"),
        (["--labels", str(labels), "--class-field", "class", "--base-model", str(tmp_path / "missing.onnx")],
         "does not exist"),
    ]  # fmt: skip
    for extra, message in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "training.finetune", "--raster", str(raster), "-o", str(tmp_path / "m.onnx"),
             "--minutes", "0.1", *extra],
            capture_output=True, text=True, cwd=REPO, check=False, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"},
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1 and message in error_lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "m.onnx").exists()


def test_command_line_trains_and_prints_the_summary(scene, base_model, tmp_path, capsys):
    raster, labels, _ = scene
    code = main(["--raster", str(raster), "--labels", str(labels), "--class-field", "class", "-o",
                 str(tmp_path / "cli.onnx"), "--base-model", str(base_model), "--minutes", "0", "--max-steps", "1",
                 "--tile-size", "64", "--overlap", "0", "--batch-size", "2", "--device", "cpu", "--threads", "1"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["classes"] == sorted(NAMES)
    assert Path(summary["model"]).is_file() and Path(summary["report"]).is_file()


def test_the_warm_up_counts_optimizer_steps_under_a_time_budget(scene, base_model, tmp_path):
    # A time budget squeezes the cosine into the minutes; the warm-up (10 steps) must still ramp up step by step.
    raster, labels, _ = scene
    log = _Log()
    run_finetune(_request(raster, labels, tmp_path, base_model=base_model, minutes=5.0, max_steps=3, lr=1e-3), log)
    rates = [float(line.split("lr ")[1].split(",")[0]) for line in log.lines if line.startswith("step ")]
    assert rates == pytest.approx([1e-3 * s / 11 for s in (1, 2, 3)], rel=5e-3)  # the log rounds to 3 digits

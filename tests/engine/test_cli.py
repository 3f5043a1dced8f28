"""Command line: `python -m engine segment | info | diagnose`, in a subprocess and in-process through main()."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

import engine.inference.pipeline
from engine.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, main
from tests.engine.pipeline_helpers import TINY_CARD, build_tiny_onnx, expected_probs, make_image, write_raster

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("cli_model") / "tiny.onnx")


@pytest.fixture
def raster(tmp_path: Path) -> tuple[Path, np.ndarray]:
    image = make_image(37, 29, seed=11)
    return write_raster(tmp_path / "in.tif", image), image


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )


def outputs_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "in.tif")


def test_segment_in_a_subprocess_writes_the_model_classes(
    tmp_path: Path, tiny_model: Path, raster: tuple[Path, np.ndarray]
) -> None:
    path, image = raster
    out, heat = tmp_path / "classes.tif", tmp_path / "heat.tif"
    done = run_module(
        "segment", str(path), "-o", str(out), "--heatmaps", str(heat), "--model", str(tiny_model),
        "--device", "cpu", "--backend", "onnxruntime", "--tile-size", "16", "--overlap", "4", "--batch-size", "2",
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    probs = expected_probs(image)
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(1), probs.argmax(axis=0))
    assert heat.is_file()
    assert summary["valid_pixels"] == 37 * 29 and summary["backend"] == "onnxruntime"
    counts = np.bincount(probs.argmax(axis=0).ravel(), minlength=3)
    assert summary["class_pixel_counts"] == dict(zip(TINY_CARD.class_names, counts.tolist(), strict=True))
    assert "Traceback" not in done.stderr


def test_segment_in_process_with_options(tmp_path: Path, tiny_model: Path, raster: tuple[Path, np.ndarray]) -> None:
    path, image = raster
    out = tmp_path / "classes.tif"
    code, stdout, stderr = run_main(
        ["segment", str(path), "-o", str(out), "--model", str(tiny_model), "--stitching", "cosine", "--tta", "flip",
         "--bands", "1,2,3", "--threads", "1", "--no-resample", "-q"]
    )  # fmt: skip
    assert code == 0, stderr
    assert stdout == ""
    assert "wrote" in stderr
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(1), expected_probs(image).argmax(axis=0))
        assert dataset.tags()["tta"] == "flip" and dataset.tags()["stitching"] == "cosine"


def test_missing_input_fails_with_one_line_in_a_subprocess(tmp_path: Path, tiny_model: Path) -> None:
    done = run_module("segment", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "c.tif"), "--model", str(tiny_model))
    assert done.returncode == EXIT_BAD_INPUT
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "c.tif").exists()


def bad_input_cases(tmp_path: Path, tiny_model: Path, raster: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00 this is not a tiff")
    nodata = write_raster(tmp_path / "empty.tif", np.zeros((3, 12, 12), np.uint8), nodata=0)
    no_card = tmp_path / "nocard.onnx"
    build_tiny_onnx(no_card)
    import onnx

    proto = onnx.load(str(no_card))
    del proto.metadata_props[:]
    onnx.save(proto, str(no_card))
    out = str(tmp_path / "c.tif")
    model = ["--model", str(tiny_model)]
    return {
        "missing file": (["segment", str(tmp_path / "missing.tif"), "-o", out, *model], "does not exist"),
        "corrupt file": (["segment", str(corrupt), "-o", out, *model], "corrupt"),
        "band index": (["segment", str(raster), "-o", out, *model, "--bands", "1,2,9"], "9"),
        "band count": (["segment", str(raster), "-o", out, *model, "--bands", "1,2"], "3"),
        "band syntax": (["segment", str(raster), "-o", out, *model, "--bands", "red"], "band numbers"),
        "all nodata": (["segment", str(nodata), "-o", out, *model], "contains no valid pixels"),
        "output folder": (
            ["segment", str(raster), "-o", str(tmp_path / "in.tif" / "no" / "c.tif"), *model],
            "does not exist and cannot be created",
        ),
        "output extension": (["segment", str(raster), "-o", str(tmp_path / "c.png"), *model], "must be a GeoTIFF"),
        "model without card": (["segment", str(raster), "-o", out, "--model", str(no_card)], "card"),
        "missing model": (["segment", str(raster), "-o", out, "--model", str(tmp_path / "m.onnx")], "does not exist"),
        "tile size": (["segment", str(raster), "-o", out, *model, "--tile-size", "30"], "use a tile size of 32"),
        "overlap": (["segment", str(raster), "-o", out, *model, "--tile-size", "16", "--overlap", "16"], "Overlap"),
        "missing output option": (["segment", str(raster), *model], "-o"),
    }


CASES = [
    "missing file", "corrupt file", "band index", "band count", "band syntax", "all nodata", "output folder",
    "output extension", "model without card", "missing model", "tile size", "overlap", "missing output option",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_no_output(
    case: str,
    tmp_path: Path,
    tiny_model: Path,
    raster: tuple[Path, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, fragment = bad_input_cases(tmp_path, tiny_model, raster[0])[case]
    before = outputs_in(tmp_path)
    code, stdout, stderr = run_main(argv)
    stderr += capsys.readouterr().err  # argparse writes its error to sys.stderr
    assert code == EXIT_BAD_INPUT
    lines = stderr.strip().splitlines()
    if case == "all nodata":  # found only after reading every tile: the run's info lines and bar come first
        info = ("%|", "runs with", "Resolution of", "Tile size")
        lines = [line for line in lines if line.strip() and not any(text in line for text in info)]
    assert len(lines) == 1, stderr
    assert fragment.lower() in lines[0].lower()
    assert "Traceback" not in stderr and stdout == ""
    assert outputs_in(tmp_path) == before  # nothing new beside the inputs


def test_ctrl_c_exits_130_and_leaves_no_output(
    tmp_path: Path, tiny_model: Path, raster: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    class InterruptedBackend:
        name, device, device_reason = "fake", "cpu", "test"

        def predict(self, batch: np.ndarray) -> np.ndarray:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.inference.pipeline, "load_backend", lambda *args, **kwargs: InterruptedBackend())
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    code, _, stderr = run_main(["segment", str(raster[0]), "-o", str(out), "--heatmaps", str(heat),
                                "--model", str(tiny_model), "-q"])  # fmt: skip
    assert code == EXIT_INTERRUPTED
    assert "interrupted" in stderr
    assert outputs_in(tmp_path) == []


def test_raster_without_georeference_runs_with_a_warning(tmp_path: Path, tiny_model: Path) -> None:
    image = make_image(20, 20, seed=12)
    path = write_raster(tmp_path / "in.tif", image, georeferenced=False)
    out = tmp_path / "c.tif"
    code, _, stderr = run_main(["segment", str(path), "-o", str(out), "--model", str(tiny_model), "-q"])
    assert code == 0, stderr
    assert "no georeference" in stderr
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(1), expected_probs(image).argmax(axis=0))


def test_info_prints_the_card_as_json(tiny_model: Path) -> None:
    code, stdout, _ = run_main(["info", str(tiny_model)])
    assert code == 0
    assert json.loads(stdout) == json.loads(TINY_CARD.to_json())


def test_info_on_a_missing_model_exits_2(tmp_path: Path) -> None:
    code, stdout, stderr = run_main(["info", str(tmp_path / "none.onnx")])
    assert code == EXIT_BAD_INPUT and stdout == ""
    assert len(stderr.strip().splitlines()) == 1


def test_diagnose_prints_json_in_a_subprocess() -> None:
    done = run_module("diagnose")
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), dict)


def test_help_lists_the_documented_options() -> None:
    done = run_module("segment", "--help")
    assert done.returncode == 0
    for option in ("--heatmaps", "--model", "--device", "--backend", "--bands", "--tile-size", "--overlap",
                   "--batch-size"):  # fmt: skip
        assert option in done.stdout


SLOW_RUN = """
import sys, time
import numpy as np
import engine.inference.pipeline

class SlowBackend:
    name, device, device_reason = "fake", "cpu", "test"

    def predict(self, batch):
        sys.stderr.write("PREDICTING\\n")
        sys.stderr.flush()
        time.sleep(0.5)
        return np.full((batch.shape[0], 3, *batch.shape[2:]), 1 / 3, np.float32)

engine.inference.pipeline.load_backend = lambda *args, **kwargs: SlowBackend()
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_in_a_subprocess_exits_130_and_leaves_no_output(tmp_path: Path, tiny_model: Path) -> None:
    import signal

    path = write_raster(tmp_path / "in.tif", make_image(64, 64, seed=13))
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    argv = ["segment", str(path), "-o", str(out), "--heatmaps", str(heat), "--model", str(tiny_model),
            "--tile-size", "16", "--batch-size", "1", "-q"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, *argv], stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
    )
    assert process.stderr is not None
    for line in process.stderr:  # wait until the model runs: the outputs' temp files exist by then
        if "PREDICTING" in line:
            break
    assert outputs_in(tmp_path) != []  # the writer's temp files exist while it runs...
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=60)[1]
    assert process.returncode == EXIT_INTERRUPTED, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert outputs_in(tmp_path) == []  # ...and nothing is left after Ctrl-C


def test_preset_quality_and_explicit_options_reach_the_outputs(
    tmp_path: Path, tiny_model: Path, raster: tuple[Path, np.ndarray]
) -> None:
    path, _ = raster
    out, heat = tmp_path / "classes.tif", tmp_path / "heat.tif"
    common = [str(path), "--model", str(tiny_model), "--tile-size", "16", "-q"]
    code, _, stderr = run_main(["segment", *common, "-o", str(out), "--preset", "quality", "--tta", "none"])
    assert code == 0, stderr
    with rasterio.open(out) as dataset:
        tags = dataset.tags()
    # The preset's half-tile overlap and anchored grid; its flip TTA lost to the explicit --tta none.
    assert (tags["overlap_px"], tags["tile_grid"], tags["tta"]) == ("8", "anchored", "none")
    code, _, stderr = run_main(
        ["segment", *common, "-o", str(out), "--heatmaps", str(heat), "--heatmap-dtype", "uint8", "--tile-grid",
         "anchored"]
    )  # fmt: skip
    assert code == 0, stderr
    with rasterio.open(heat) as dataset:
        assert set(dataset.dtypes) == {"uint8"} and dataset.scales[0] == pytest.approx(1 / 250)
        assert dataset.tags()["tile_grid"] == "anchored" and dataset.tags()["heatmap_dtype"] == "uint8"


@pytest.mark.parametrize(
    ("option", "value"), [("--preset", "best"), ("--tile-grid", "world"), ("--heatmap-dtype", "float32")]
)
def test_unknown_preset_grid_or_heatmap_type_exits_2_with_the_choices(
    tmp_path: Path, raster: tuple[Path, np.ndarray], option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = raster
    code, _, _ = run_main(["segment", str(path), "-o", str(tmp_path / "c.tif"), option, value])
    assert code == EXIT_BAD_INPUT
    stderr = capsys.readouterr().err  # argparse's own one line
    assert "invalid choice" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.tif").exists()

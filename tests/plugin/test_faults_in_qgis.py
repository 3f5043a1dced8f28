"""bicorseg:segmentlandcover under faults and in its messages, in real QGIS.

A failed write adds no layer and leaves no file (no raster, no .qml, no statistics); memory running out and
unreadable checkpoints are one clear QgsProcessingException; every message reaches the algorithm log once, naming
Processing parameters (never a command-line flag); a successful run prints no GDAL error and leaves no histogram
in the heatmaps' .aux.xml; GDAL's block cache is bounded for the run and restored after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback, QgsProject

from .conftest import ORIGIN, PIXEL_M, class_map, write_rgb

pytestmark = pytest.mark.qgis
ALG = "bicorseg:segmentlandcover"
REPO = Path(__file__).resolve().parents[2]


class RecordingFeedback(QgsProcessingFeedback):
    """Everything the algorithm says, in order, whatever the channel."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def pushInfo(self, info):
        self.lines.append(info)

    def pushWarning(self, warning):
        self.lines.append(warning)

    def reportError(self, error, fatalError=False):
        self.lines.append(error)


def run_and_load(parameters: dict, feedback: QgsProcessingFeedback | None = None) -> dict:
    """Run as the toolbox does: outputs loaded into the project when the run succeeds."""
    import processing

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return processing.runAndLoadResults(ALG, parameters, feedback=feedback or QgsProcessingFeedback(), context=context)


@pytest.fixture
def project(qgis_app):
    QgsProject.instance().clear()
    yield QgsProject.instance()
    QgsProject.instance().clear()


def test_a_full_disk_adds_no_layer_and_leaves_no_file(tmp_path, rgb_raster, tiny_model, project, monkeypatch):
    from engine.raster import write_checks

    raster, _ = rgb_raster
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(write_checks, "free_bytes", lambda folder: 1000)
    with pytest.raises(QgsProcessingException, match="No space left on the device of") as caught:
        run_and_load({"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(out / "classes.tif"),
                      "HEATMAPS": str(out / "heat.tif")})  # fmt: skip
    assert ".tmp.tif" not in str(caught.value)
    assert sorted(p.name for p in out.iterdir()) == []  # no raster, no .qml, no statistics, no temporaries
    assert project.mapLayers() == {}


@pytest.mark.parametrize("failure", ["onnxruntime allocation", "MemoryError"])
def test_running_out_of_memory_says_to_lower_batch_size_or_tile_size(
    tmp_path, rgb_raster, tiny_model, run_alg, monkeypatch, failure
):
    from onnxruntime import InferenceSession

    def fail(self, *args, **kwargs):
        if failure == "MemoryError":
            raise MemoryError
        raise RuntimeError(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"
        )

    monkeypatch.setattr(InferenceSession, "run", fail)
    raster, _ = rgb_raster
    with pytest.raises(QgsProcessingException) as caught:
        run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif")})
    text = str(caught.value)
    assert "BATCH_SIZE" in text and "TILE_SIZE" in text and "--" not in text
    assert not (tmp_path / "c.tif").exists()


def test_a_pt_that_is_not_a_model_is_one_short_message(tmp_path, rgb_raster, run_alg):
    model = tmp_path / "random.pt"
    model.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    raster, _ = rgb_raster
    with pytest.raises(QgsProcessingException, match="Cannot read torch checkpoint") as caught:
        run_alg(ALG, {"INPUT": str(raster), "MODEL": str(model), "OUTPUT": str(tmp_path / "c.tif")})
    text = str(caught.value)
    assert "weights_only" not in text and "\n" not in text and len(text.replace(str(model), "")) < 260


def test_each_message_reaches_the_algorithm_log_once(tmp_path, tiny_model, run_alg):
    plain = tmp_path / "plain.tif"
    import rasterio

    data = np.random.default_rng(2).integers(20, 250, size=(3, 24, 24)).astype(np.uint8)
    with rasterio.open(plain, "w", driver="GTiff", height=24, width=24, count=3, dtype="uint8") as dst:
        dst.write(data)
    feedback = RecordingFeedback()
    run_alg(ALG, {"INPUT": str(plain), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif")}, feedback)
    assert len(feedback.lines) == len(set(feedback.lines)), feedback.lines
    assert sum("no georeference" in line for line in feedback.lines) == 1  # was twice
    assert sum("runs with onnxruntime on cpu" in line for line in feedback.lines) == 1
    assert sum("CUDA" in line or "CPU requested" in line for line in feedback.lines) == 1  # the reason, once


@pytest.mark.parametrize(
    ("change", "name"),
    [({"BANDS": [1, 2]}, "BANDS"), ({"DEVICE": "cuda"}, "DEVICE auto or cpu")],
)
def test_messages_name_processing_parameters_never_command_line_flags(
    tmp_path, rgb_raster, tiny_model, run_alg, change, name
):
    import onnxruntime

    if "DEVICE" in change and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is usable here, so DEVICE cuda is not an error")
    raster, _ = rgb_raster
    with pytest.raises(QgsProcessingException) as caught:
        run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif"), **change})
    text = str(caught.value)
    assert name in text
    assert "--" not in text and "in QGIS" not in text


def test_a_vrt_with_a_missing_source_names_the_missing_file(tmp_path, tiny_model, run_alg):
    source = write_rgb(tmp_path / "tile.tif", class_map(16, 16))
    vrt = tmp_path / "mosaic.vrt"
    subprocess.run(["gdalbuildvrt", "-q", str(vrt), str(source)], check=True)
    source.unlink()
    with pytest.raises(QgsProcessingException) as caught:
        run_alg(ALG, {"INPUT": str(vrt), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif")})
    assert str(source) in str(caught.value) or "tile.tif" in str(caught.value)
    assert "See previous exception" not in str(caught.value)


def test_help_says_which_extent_order_processing_and_the_command_line_use(provider):
    text = " ".join(provider.algorithm("segmentlandcover").shortHelpString().split())
    assert "xmin,xmax,ymin,ymax" in text and "--extent" in text and "xmin,ymin,xmax,ymax" in text


def test_output_extension_is_refused_with_the_command_line_s_message(tmp_path, rgb_raster, tiny_model, run_alg):
    from engine.cli import main

    raster, _ = rgb_raster
    target = tmp_path / "classes.png"
    with pytest.raises(QgsProcessingException) as caught:
        run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(target)})
    import io

    err = io.StringIO()
    assert main(["segment", str(raster), "-o", str(target), "--model", str(tiny_model)], stderr=err) == 2
    assert err.getvalue().strip() == f"error: {caught.value}"  # one check, one message, both front ends


def test_a_missing_output_folder_is_created_as_on_the_command_line(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, _ = rgb_raster
    out = tmp_path / "new" / "deeper" / "classes.tif"
    run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(out)})
    assert out.is_file()


def test_gdal_s_block_cache_is_bounded_for_the_run_and_restored(tmp_path, rgb_raster, tiny_model, run_alg):
    from rasterio.env import get_gdal_config

    class CacheWatcher(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.seen: list[int] = []
            self.progressChanged.connect(lambda _: self.seen.append(int(get_gdal_config("GDAL_CACHEMAX"))))

    before = int(get_gdal_config("GDAL_CACHEMAX"))
    watcher = CacheWatcher()
    raster, _ = rgb_raster
    run_alg(ALG, {"INPUT": str(raster), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif")}, watcher)
    assert watcher.seen and max(watcher.seen) <= min(before, 32 * 2**20)
    assert int(get_gdal_config("GDAL_CACHEMAX")) == before


LOADED_RUN = """
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject
app = QgsApplication([], False)
app.initQgis()
sys.path.append("/usr/share/qgis/python/plugins")
from processing.core.Processing import Processing
Processing.initialize()
from bicorseg_qgis.provider import BiCoRSegProvider
provider = BiCoRSegProvider()  # kept referenced: the registry holds only a C++ pointer
QgsApplication.processingRegistry().addProvider(provider)
import processing
raster, model, out, extent = sys.argv[1:5]
context = QgsProcessingContext()
context.setProject(QgsProject.instance())
processing.runAndLoadResults("bicorseg:segmentlandcover", {
    "INPUT": raster, "MODEL": model, "OUTPUT": out + "/classes.tif", "HEATMAPS": out + "/heat.tif", "EXTENT": extent,
}, feedback=QgsProcessingFeedback(), context=context)
assert len(QgsProject.instance().mapLayers()) == 4, QgsProject.instance().mapLayers()
QgsProject.instance().clear()
app.exitQgis()
"""


@pytest.mark.parametrize("pixels", [1, 40], ids=["one-pixel extent", "small extent"])
def test_a_successful_run_prints_no_gdal_error_and_leaves_no_histogram(tmp_path, tiny_model, pixels):
    """QGIS's default multiband stretch on the heatmaps used to compute (and store) histograms of three bands."""
    raster = write_rgb(tmp_path / "input.tif", class_map(40, 40))
    x0, y0 = ORIGIN
    side = PIXEL_M * (1 if pixels == 1 else 6)
    extent = f"{x0 + 0.1},{x0 + 0.1 + side * 0.9},{y0 - 0.1 - side * 0.9},{y0 - 0.1} [EPSG:32640]"
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOADED_RUN), str(raster), str(tiny_model), str(out), extent],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr, done.stderr
    aux = out / "heat.tif.aux.xml"
    assert not aux.exists() or aux.stat().st_size < 10_000
    assert "Histogram" not in (aux.read_text() if aux.exists() else "")

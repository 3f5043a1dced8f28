"""bicorseg:segmentlandcover in real QGIS: RESAMPLE, the resolution line and refusal, VALUE_SCALING, enums given by
number, and a raster without georeference that overlays its result (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsRasterLayer
from rasterio.transform import from_origin

from .conftest import CRS, ORIGIN, _card, class_map, export_tiny_onnx, write_rgb

pytestmark = pytest.mark.qgis
ALG = "bicorseg:segmentlandcover"


class RecordingFeedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def pushInfo(self, info):
        self.infos.append(info)
        super().pushInfo(info)

    def pushWarning(self, warning):
        self.warnings.append(warning)
        super().pushWarning(warning)

    def lines(self, text: str) -> list[str]:
        return [line for line in self.infos + self.warnings if text in line]


@pytest.fixture(scope="module")
def model_2m(tmp_path_factory):
    return export_tiny_onnx(tmp_path_factory.mktemp("model2m") / "tiny2m.onnx", card=_card(gsd_m=2.0))


def write_at(path, classes, res_m, dtype="uint8", scale=1, offset=0):
    """The conftest's brightest-band raster at another resolution / data type (values x scale + offset)."""
    write_rgb(path, classes)
    with rasterio.open(path) as src:
        data = src.read().astype(np.float64) * scale + offset
    profile = {"driver": "GTiff", "count": 3, "height": classes.shape[0], "width": classes.shape[1], "dtype": dtype,
               "crs": CRS, "transform": from_origin(*ORIGIN, res_m, res_m)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(dtype))
    return path


def test_the_log_states_both_resolutions_and_the_grid_once(tmp_path, model_2m, run_alg):
    raster = write_at(tmp_path / "input.tif", class_map(40, 60), res_m=0.5)
    feedback = RecordingFeedback()
    run_alg(ALG, {"INPUT": str(raster), "MODEL": str(model_2m), "OUTPUT": str(tmp_path / "c.tif")}, feedback=feedback)
    assert feedback.lines("Resolution of") == [
        "Resolution of 'input.tif': input 0.5 m, model 2 m: resampled to a 15 x 10 px processing grid (input 60 x 40 px)."
    ]


def test_a_coarse_raster_is_refused_naming_resample_and_runs_with_resample_false(tmp_path, model_2m, run_alg):
    raster = write_at(tmp_path / "landsat.tif", class_map(40, 40), res_m=300.0)
    parameters = {"INPUT": str(raster), "MODEL": str(model_2m), "OUTPUT": str(tmp_path / "c.tif")}
    with pytest.raises(QgsProcessingException) as caught:
        run_alg(ALG, parameters)
    message = str(caught.value)
    assert "300 m" in message and "2 m" in message and "RESAMPLE false" in message and "--" not in message
    assert not (tmp_path / "c.tif").exists()
    feedback = RecordingFeedback()
    result = run_alg(ALG, {**parameters, "RESAMPLE": False}, feedback=feedback)
    with rasterio.open(result["OUTPUT"]) as out:
        np.testing.assert_array_equal(out.read(1), class_map(40, 40))  # the pointwise model on the input grid
    warned = [w for w in feedback.warnings if "Resolution of" in w]
    assert len(warned) == 1 and "expect poor results" in warned[0] and "RESAMPLE true" in warned[0]
    assert len(feedback.lines("Resolution of")) == 1  # said once, as a warning


def test_a_much_finer_raster_warns_what_the_model_sees(tmp_path, model_2m, run_alg):
    raster = write_at(tmp_path / "drone.tif", class_map(200, 200), res_m=0.1)
    feedback = RecordingFeedback()
    run_alg(ALG, {"INPUT": str(raster), "MODEL": str(model_2m), "OUTPUT": str(tmp_path / "c.tif")}, feedback=feedback)
    assert len(feedback.lines("Resolution of")) == 1
    (warning,) = [w for w in feedback.warnings if "Resolution of" in w]
    assert "the model sees 10 x 10 pixels" in warning and "RESAMPLE false" in warning


def test_value_scaling_lets_a_16_bit_raster_match_its_8_bit_twin(tmp_path, tiny_model, run_alg):
    classes = class_map(32, 48)
    eight = write_at(tmp_path / "u8.tif", classes, res_m=0.5)
    sixteen = write_at(tmp_path / "u16.tif", classes, res_m=0.5, dtype="uint16", scale=257)
    base = {"MODEL": str(tiny_model)}
    twin = run_alg(ALG, {**base, "INPUT": str(eight), "VALUE_SCALING": "percentile", "OUTPUT": str(tmp_path / "a.tif")})
    feedback = RecordingFeedback()
    card = run_alg(ALG, {**base, "INPUT": str(sixteen), "OUTPUT": str(tmp_path / "b.tif")}, feedback=feedback)
    advice = [w for w in feedback.warnings if "u16.tif" in w and "values" in w]
    assert len(advice) == 1 and "VALUE_SCALING percentile" in advice[0] and "--" not in advice[0]
    for value in ("percentile", 2):  # the string, or the option number qgis_process lists
        scaled = run_alg(
            ALG, {**base, "INPUT": str(sixteen), "VALUE_SCALING": value, "OUTPUT": str(tmp_path / f"c{value}.tif")}
        )
        with rasterio.open(twin["OUTPUT"]) as a, rasterio.open(scaled["OUTPUT"]) as b:
            assert np.mean(a.read(1) == b.read(1)) > 0.995
    with rasterio.open(card["OUTPUT"]) as out:
        assert out.read(1).shape == classes.shape


@pytest.mark.parametrize("device", ["cpu", "1", 1])
def test_device_and_backend_take_the_string_or_the_option_number(tmp_path, rgb_raster, tiny_model, run_alg, device):
    raster, expected = rgb_raster
    parameters = {"INPUT": str(raster), "MODEL": str(tiny_model), "DEVICE": device, "BACKEND": "1",
                  "OUTPUT": str(tmp_path / "c.tif")}  # fmt: skip
    result = run_alg(ALG, parameters)
    assert result["DEVICE_USED"] == "cpu" and result["BACKEND_USED"] == "onnxruntime"
    with rasterio.open(result["OUTPUT"]) as out:
        np.testing.assert_array_equal(out.read(1), expected)


@pytest.mark.parametrize(("name", "value"), [("DEVICE", "7"), ("DEVICE", "gpu"), ("VALUE_SCALING", "auto")])
def test_unknown_enum_values_are_refused(tmp_path, rgb_raster, tiny_model, run_alg, name, value):
    raster, _ = rgb_raster
    parameters = {"INPUT": str(raster), "MODEL": str(tiny_model), name: value, "OUTPUT": str(tmp_path / "c.tif")}
    with pytest.raises(QgsProcessingException, match=name):
        run_alg(ALG, parameters)


def test_the_enum_lists_match_the_engine():
    import engine
    from bicorseg_qgis.algorithms.segment_land_cover import VALUE_SCALINGS

    assert engine.VALUE_SCALINGS == VALUE_SCALINGS


def test_a_raster_without_georeference_and_its_result_overlay_in_qgis(tmp_path, tiny_model, run_alg):
    classes = class_map(24, 40)
    raster = write_rgb(tmp_path / "georef.tif", classes)
    plain = tmp_path / "plain.tif"
    with rasterio.open(raster) as src:
        data = src.read()
    profile = {"driver": "GTiff", "count": 3, "height": 24, "width": 40, "dtype": "uint8"}
    with rasterio.open(plain, "w", **profile) as dst:  # no CRS, no geotransform
        dst.write(data)
    result = run_alg(ALG, {"INPUT": str(plain), "MODEL": str(tiny_model), "OUTPUT": str(tmp_path / "c.tif")})
    source, output = QgsRasterLayer(str(plain), "in", "gdal"), QgsRasterLayer(result["OUTPUT"], "out", "gdal")
    assert source.isValid() and output.isValid()
    # QGIS draws both on the same pixel grid (before: the output had a flipped identity transform and lay below).
    assert output.extent() == source.extent(), (output.extent().toString(), source.extent().toString())
    with rasterio.open(result["OUTPUT"]) as out:
        np.testing.assert_array_equal(out.read(1), classes)

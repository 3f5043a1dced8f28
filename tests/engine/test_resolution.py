"""Resolution: GSD from the pixel vectors (rotated, geographic), the processing grid, the warning and the refusal."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin

from engine.cli import EXIT_BAD_INPUT, main
from engine.errors import InvalidRasterError
from engine.inference.pipeline import SegmentationRequest, segment_raster
from engine.option_names import for_command_line
from engine.raster.reader import RasterSource
from engine.raster.resolution import metres_per_degree, pixel_size_m, plan_resolution
from tests.engine.pipeline_helpers import TINY_CARD, build_tiny_onnx, make_image
from tests.engine.tiny_assets import ORIGIN, UTM40N, MakeGeoTiff, make_tiny_card

UTM = CRS.from_string(UTM40N)
WGS84 = CRS.from_epsg(4326)


def rotated(resolution_m: float, degrees: float, origin: tuple[float, float] = ORIGIN) -> Affine:
    """A north-up ``resolution_m`` grid turned by ``degrees`` about its top-left corner."""
    return Affine.translation(*origin) * Affine.rotation(degrees) * Affine.scale(resolution_m, -resolution_m)


def smooth_image(height: int, width: int, seed: int = 5) -> np.ndarray:
    """8-px blocks plus noise: resampling to a coarser grid changes values, so a skipped resampling shows."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, size=(3, -(-height // 8), -(-width // 8)), dtype=np.uint8)
    image = np.kron(blocks, np.ones((1, 8, 8), dtype=np.uint8))[:, :height, :width].astype(np.int32)
    return (image + rng.integers(-60, 60, size=image.shape)).clip(0, 255).astype(np.uint8)


# --- ground sampling distance ---------------------------------------------------------------------------------


def test_pixel_size_of_a_north_up_projected_raster() -> None:
    assert pixel_size_m(UTM, from_origin(*ORIGIN, 0.5, 0.25), 10, 10) == pytest.approx((0.5, 0.25))


@pytest.mark.parametrize("degrees", [30.0, -45.0, 90.0, 137.0])
def test_a_rotated_raster_has_the_gsd_of_its_north_up_twin(degrees: float) -> None:
    assert pixel_size_m(UTM, rotated(1.0, degrees), 10, 10) == pytest.approx((1.0, 1.0))


def test_a_sheared_raster_has_the_lengths_of_its_pixel_vectors() -> None:
    sheared = Affine(2.0, 1.0, ORIGIN[0], 0.0, -2.0, ORIGIN[1])  # columns step (2, 0), rows step (1, -2)
    assert pixel_size_m(UTM, sheared, 10, 10) == pytest.approx((2.0, math.sqrt(5.0)))


def wgs84_metres_per_degree(latitude: float) -> tuple[float, float]:
    """Independent reference: the WGS 84 radii of curvature (closed form, not the series the engine uses)."""
    a, e2 = 6_378_137.0, 0.00669437999014
    phi = math.radians(latitude)
    w = 1.0 - e2 * math.sin(phi) ** 2
    return math.pi * a * math.cos(phi) / (180.0 * math.sqrt(w)), math.pi * a * (1.0 - e2) / (180.0 * w**1.5)


@pytest.mark.parametrize("latitude", [0.0, 25.2, 60.0, -45.0])
def test_geographic_pixels_use_the_metres_per_degree_at_the_raster_centre(latitude: float) -> None:
    step = 1e-5  # degrees
    transform = from_origin(55.0, latitude + 50 * step, step, step)  # 100 rows: centre at `latitude`
    x_m, y_m = pixel_size_m(WGS84, transform, 100, 100) or (0.0, 0.0)
    per_lon, per_lat = wgs84_metres_per_degree(latitude)
    assert x_m == pytest.approx(per_lon * step, rel=1e-4)
    assert y_m == pytest.approx(per_lat * step, rel=1e-4)


def test_metres_per_degree_at_the_equator_and_the_pole() -> None:
    per_lon, per_lat = metres_per_degree(0.0)
    assert per_lon == pytest.approx(111_319.5, rel=1e-4) and per_lat == pytest.approx(110_574.3, rel=1e-4)
    assert metres_per_degree(90.0)[0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("crs", "transform"), [(None, from_origin(0, 0, 1, 1)), (UTM, Affine.identity()), (WGS84, from_origin(0, 95, 1, 1))]
)
def test_unknown_gsd(crs: CRS | None, transform: Affine) -> None:
    assert pixel_size_m(crs, transform, 4, 4) is None  # no CRS, no geotransform, latitudes beyond the pole


def test_a_rotated_raster_is_resampled_like_its_north_up_twin(make_geotiff: MakeGeoTiff) -> None:
    image = smooth_image(48, 64)
    north = make_geotiff(image, name="north.tif", res_m=1.0, photometric="RGB")
    turned = make_geotiff(image, name="turned.tif", transform=rotated(1.0, 30.0), photometric="RGB")
    card = make_tiny_card(gsd_m=2.0)
    with RasterSource.open(north, card) as a, RasterSource.open(turned, card) as b:
        assert a.resampled and b.resampled
        assert (b.height, b.width) == (a.height, a.width) == (24, 32)
        assert b.input_gsd_m == pytest.approx(1.0)
        # Same bounds exactly: the processing grid keeps the rotation.
        corner = b.processing_transform * (b.width, b.height)
        assert corner == pytest.approx(b.transform * (b.input_width, b.input_height))


def test_a_rotated_run_agrees_with_its_north_up_twin(tmp_path: Path) -> None:
    model = build_tiny_onnx(tmp_path / "tiny2m.onnx", TINY_CARD.replace(gsd_m=2.0))
    image = smooth_image(200, 240)
    results = []
    for name, transform in (("north", from_origin(*ORIGIN, 1.0, 1.0)), ("turned", rotated(1.0, 30.0))):
        path = tmp_path / f"{name}.tif"
        profile = {"driver": "GTiff", "count": 3, "height": 200, "width": 240, "dtype": "uint8", "crs": UTM40N}
        with rasterio.open(path, "w", transform=transform, **profile) as dst:
            dst.write(image)
        out = tmp_path / f"{name}_classes.tif"
        segment_raster(SegmentationRequest(path, out, model_path=model, device="cpu", num_threads=1))
        with rasterio.open(out) as dataset:
            assert dataset.transform == transform  # each output on its own input's grid
            results.append(dataset.read(1))
    agreement = float(np.mean(results[0] == results[1]))
    assert agreement > 0.99, agreement  # before: the rotated raster skipped resampling (82 % here)


def test_a_geographic_raster_is_resampled_per_axis_to_square_metres(make_geotiff: MakeGeoTiff) -> None:
    latitude = 60.0
    step = 1e-5  # degrees: about 0.557 m across and 1.114 m along the meridian at 60 deg N
    transform = from_origin(10.0, latitude + 20 * step, step, step)
    path = make_geotiff(smooth_image(40, 60), crs="EPSG:4326", transform=transform, photometric="RGB")
    with RasterSource.open(path, make_tiny_card(gsd_m=1.114)) as source:
        assert source.resampled
        assert (source.height, source.width) == (40, 30)


# --- the plan and its messages --------------------------------------------------------------------------------


def test_plan_keeps_the_grid_within_tolerance_and_when_told_not_to_resample() -> None:
    assert not plan_resolution(100, 80, (0.51, 0.51), 0.5, resample=True).resampled
    assert not plan_resolution(100, 80, (1.0, 1.0), 0.5, resample=False).resampled
    assert not plan_resolution(100, 80, None, 0.5, resample=True).resampled
    plan = plan_resolution(100, 80, (1.0, 1.0), 0.5, resample=True)
    assert (plan.width_px, plan.height_px, plan.pixel_factor) == (200, 160, 4.0)


def test_a_coarse_raster_that_would_be_upsampled_over_16x_is_refused(make_geotiff: MakeGeoTiff) -> None:
    path = make_geotiff(smooth_image(100, 100), name="landsat.tif", res_m=300.0, photometric="RGB")
    with pytest.raises(InvalidRasterError) as caught:
        RasterSource.open(path, make_tiny_card(gsd_m=2.0))
    message = str(caught.value)
    for part in ("300 m", "2 m", "22,500", "15,000 x 15,000 px", "a model made for about 300 m", "RESAMPLE false"):
        assert part in message, message
    with RasterSource.open(path, make_tiny_card(gsd_m=2.0), resample_to_model_gsd=False) as source:
        assert (source.height, source.width) == (100, 100) and source.resolution_warned  # runs, with the warning
        assert "objects 150x smaller" in source.resolution_line


def test_upsampling_up_to_16x_the_pixels_runs(make_geotiff: MakeGeoTiff) -> None:
    path = make_geotiff(smooth_image(10, 10), res_m=8.0, photometric="RGB")
    with RasterSource.open(path, make_tiny_card(gsd_m=2.0)) as source:
        assert (source.height, source.width) == (40, 40) and not source.resolution_warned


def test_the_refusal_names_the_processing_parameter_and_the_cli_its_flag(make_geotiff: MakeGeoTiff) -> None:
    path = make_geotiff(smooth_image(100, 100), res_m=300.0, photometric="RGB")
    with pytest.raises(InvalidRasterError, match="RESAMPLE false") as caught:
        RasterSource.open(path, make_tiny_card(gsd_m=2.0))
    assert "--" not in str(caught.value)  # one spelling in the engine: QGIS shows it as it is
    on_the_command_line = for_command_line(str(caught.value))
    assert "--no-resample to run" in on_the_command_line and "RESAMPLE" not in on_the_command_line


def test_a_much_finer_raster_warns_what_the_model_sees(
    make_geotiff: MakeGeoTiff, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_geotiff(smooth_image(400, 400), name="drone.tif", res_m=0.1, photometric="RGB")
    with caplog.at_level(logging.WARNING), RasterSource.open(path, make_tiny_card(gsd_m=2.0)) as source:
        assert (source.height, source.width) == (20, 20)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "the model sees 20 x 20 pixels" in warnings[0] and "0.1 m" in warnings[0] and "2 m" in warnings[0]
    assert "RESAMPLE false" in warnings[0] and "--no-resample" in for_command_line(warnings[0])


def test_no_warning_within_a_factor_of_4(make_geotiff: MakeGeoTiff, caplog: pytest.LogCaptureFixture) -> None:
    path = make_geotiff(smooth_image(40, 40), res_m=0.5, photometric="RGB")
    with caplog.at_level(logging.WARNING), RasterSource.open(path, make_tiny_card(gsd_m=1.9)) as source:
        assert source.resampled and not source.resolution_warned
        # 20 m at 1.9 m cells on the CRS lattice: from cell floor(500000 / 1.9) to ceil(500020 / 1.9), 12 cells.
        assert "input 0.5 m, model 1.9 m: resampled to a 12 x 12 px processing grid" in source.resolution_line
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- what the command line says without -v ------------------------------------------------------------------


def write_utm(path: Path, image: np.ndarray, res_m: float) -> Path:
    profile = {"driver": "GTiff", "count": 3, "height": image.shape[1], "width": image.shape[2], "dtype": "uint8"}
    with rasterio.open(path, "w", crs=UTM40N, transform=from_origin(*ORIGIN, res_m, res_m), **profile) as dst:
        dst.write(image)
    return path


@pytest.fixture(scope="module")
def model_2m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("model2m") / "tiny2m.onnx", TINY_CARD.replace(gsd_m=2.0))


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    code = main(["segment", *argv, "-q", "--threads", "1"], stdout=io.StringIO(), stderr=err)
    return code, err.getvalue()


def test_the_command_line_states_the_resolutions_and_grid_once_without_verbose(tmp_path: Path, model_2m: Path) -> None:
    path = write_utm(tmp_path / "in.tif", make_image(40, 60), res_m=0.5)
    code, stderr = run_cli(str(path), "-o", str(tmp_path / "c.tif"), "--model", str(model_2m))
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if "Resolution" in line]
    expected = (
        "Resolution of 'in.tif': input 0.5 m, model 2 m: resampled to a 15 x 10 px processing grid (input 60 x 40 px)."
    )
    assert lines == [expected]


def test_the_command_line_warns_once_about_a_much_finer_raster(tmp_path: Path, model_2m: Path) -> None:
    path = write_utm(tmp_path / "drone.tif", make_image(200, 200), res_m=0.1)
    code, stderr = run_cli(str(path), "-o", str(tmp_path / "c.tif"), "--model", str(model_2m))
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if "Resolution" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "the model sees 10 x 10 pixels" in lines[0]


def test_the_command_line_refuses_a_coarse_raster_with_one_line_and_no_output(tmp_path: Path, model_2m: Path) -> None:
    path = write_utm(tmp_path / "landsat.tif", make_image(100, 100), res_m=300.0)
    code, stderr = run_cli(str(path), "-o", str(tmp_path / "c.tif"), "--model", str(model_2m))
    assert code == EXIT_BAD_INPUT
    assert len(stderr.strip().splitlines()) == 1 and "--no-resample" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landsat.tif"]
    code, stderr = run_cli(str(path), "-o", str(tmp_path / "c.tif"), "--model", str(model_2m), "--no-resample")
    assert code == 0, stderr
    assert "expect poor results" in stderr

"""Value scaling: card / minmax / percentile, the sample of blocks, and the warning that names the option that fits."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from engine.cli import EXIT_BAD_INPUT, main
from engine.errors import InvalidInputError
from engine.inference.pipeline import SegmentationRequest, segment_raster
from engine.option_names import for_command_line
from engine.raster.bands import Normalizer
from engine.raster.reader import RasterSource
from engine.raster.value_scaling import SAMPLE_WINDOW_PX, SAMPLE_WINDOWS_PER_AXIS, sample_windows
from tests.engine.pipeline_helpers import (
    TINY_CARD,
    build_brightness_onnx,
    expected_brightness_classes,
)
from tests.engine.tiny_assets import ORIGIN, UTM40N


def twin_images(height: int = 96, width: int = 128, seed: int = 8) -> np.ndarray:
    """An 8-bit RGB image spanning 0..255 in every band, in smooth patches of dark, mid and bright."""
    rng = np.random.default_rng(seed)
    level = np.kron(rng.integers(0, 3, size=(height // 16, width // 16)), np.ones((16, 16), dtype=np.int64))
    base = np.array([30, 128, 225])[level]
    image = (base[None] + rng.integers(-25, 26, size=(3, height, width))).clip(0, 255).astype(np.uint8)
    image[:, 0, 0], image[:, 0, 1] = 0, 255  # the full range in every band
    return image


def write(path: Path, image: np.ndarray, **profile: object) -> Path:
    kwargs = {
        "driver": "GTiff", "count": image.shape[0], "height": image.shape[1], "width": image.shape[2],
        "dtype": image.dtype.name, "crs": UTM40N, "transform": from_origin(*ORIGIN, 0.5, 0.5),
    }  # fmt: skip
    kwargs.update(profile)
    with rasterio.open(path, "w", **kwargs) as dst:
        dst.write(image)
    return path


@pytest.fixture(scope="module")
def brightness_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_brightness_onnx(tmp_path_factory.mktemp("brightness") / "brightness.onnx")


def classes_of(raster: Path, model: Path, out: Path, scaling: str) -> np.ndarray:
    request = SegmentationRequest(raster, out, model_path=model, device="cpu", num_threads=1, value_scaling=scaling)
    segment_raster(request)
    with rasterio.open(out) as dataset:
        return dataset.read(1)


# --- the normaliser -----------------------------------------------------------------------------------------


def test_per_band_ranges_scale_each_band_and_clip() -> None:
    card = TINY_CARD  # mean 0.5, std 0.25 per band
    normalizer = Normalizer.from_card(card, [(0.0, 100.0), (1000.0, 3000.0), (-50.0, 50.0)])
    raw = np.array([[[50.0, 200.0]], [[1000.0, 2000.0]], [[-100.0, 0.0]]])
    scaled = (normalizer(raw) * 0.25 + 0.5).round(6)
    np.testing.assert_allclose(scaled, [[[0.5, 1.0]], [[0.0, 0.5]], [[0.0, 0.5]]])  # 200 and -100 clipped
    assert Normalizer.from_card(card, [(0.0, 100.0)] * 3).raw_value_for_zero() == (50.0, 50.0, 50.0)


def test_card_scaling_is_unchanged_and_unclipped() -> None:
    normalizer = Normalizer.from_card(TINY_CARD)
    raw = np.array([[[0.0, 510.0]]] * 3)
    np.testing.assert_allclose(normalizer(raw)[:, 0, :], [[-2.0, 6.0]] * 3)


def test_the_sample_reads_a_small_raster_whole_and_a_large_one_in_a_bounded_number_of_windows() -> None:
    small = sample_windows(100, 300)
    covered = np.zeros((100, 300), dtype=bool)
    for w in small:
        covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = True
    assert covered.all()
    large = sample_windows(100_000, 80_000)
    assert len(large) == SAMPLE_WINDOWS_PER_AXIS**2
    assert all(w.width == w.height == SAMPLE_WINDOW_PX for w in large)
    assert max(w.col_off + w.width for w in large) == 80_000 and max(w.row_off + w.height for w in large) == 100_000


# --- 16-bit, signed and float imagery agree with their 8-bit twin ----------------------------------------


@pytest.mark.parametrize("scaling", ["minmax", "percentile"])
def test_full_range_uint16_agrees_with_its_8_bit_twin(tmp_path: Path, brightness_model: Path, scaling: str) -> None:
    image = twin_images()
    eight = classes_of(write(tmp_path / "u8.tif", image), brightness_model, tmp_path / "c8.tif", scaling)
    sixteen = write(tmp_path / "u16.tif", image.astype(np.uint16) * 257)
    agreement = float(np.mean(classes_of(sixteen, brightness_model, tmp_path / "c16.tif", scaling) == eight))
    assert agreement > 0.995, agreement
    # The test can fail: under the card's 0-255 the 16-bit twin is all "bright".
    card_agreement = float(np.mean(classes_of(sixteen, brightness_model, tmp_path / "card.tif", "card") == eight))
    assert card_agreement < 0.5, card_agreement


def test_int16_with_negatives_works_with_minmax(tmp_path: Path, brightness_model: Path) -> None:
    image = twin_images()
    signed = write(tmp_path / "i16.tif", image.astype(np.int16) * 8 - 1000)  # -1000 .. 1040
    classes = classes_of(signed, brightness_model, tmp_path / "c.tif", "minmax")
    # Independent reference: minmax maps -1000..1040 back to 0..1, i.e. the 8-bit image / 255.
    mean = ((image / 255.0 - 0.5) / 0.25).mean(axis=0)
    agreement = float(np.mean(classes == expected_brightness_classes(mean)))
    assert agreement > 0.995, agreement


def test_percentile_ignores_a_few_extreme_values(tmp_path: Path, brightness_model: Path) -> None:
    image = twin_images().astype(np.float32)
    spiky = image.copy()
    spiky[:, 5, 5:9] = 1e6  # four hot pixels would squash minmax
    eight = classes_of(write(tmp_path / "a.tif", image), brightness_model, tmp_path / "a_c.tif", "percentile")
    hot = classes_of(write(tmp_path / "b.tif", spiky), brightness_model, tmp_path / "b_c.tif", "percentile")
    assert float(np.mean(hot == eight)) > 0.99


def test_minmax_takes_the_statistics_gdal_already_stores(tmp_path: Path) -> None:
    path = write(tmp_path / "u16.tif", twin_images().astype(np.uint16) * 257)
    with rasterio.open(path, "r+") as dataset:
        for band in (1, 2, 3):
            dataset.update_tags(band, STATISTICS_MINIMUM="100", STATISTICS_MAXIMUM="60000")
    with RasterSource.open(path, TINY_CARD, value_scaling="minmax") as source:
        assert source.scaling_line.count("100-60,000") == 3, source.scaling_line
    with RasterSource.open(path, TINY_CARD, value_scaling="percentile") as source:
        assert "100-60,000" not in source.scaling_line  # percentiles come from the sample


def test_nodata_is_left_out_of_the_ranges(tmp_path: Path) -> None:
    image = twin_images().astype(np.uint16) * 257
    image[:, :40] = 0  # nodata rows would pull the minimum to 0 ...
    image[:, 50, 0], image[:, 50, 1] = 257, 65535  # ... the valid range is 257 - 65,535
    path = write(tmp_path / "nd.tif", image, nodata=0)
    with RasterSource.open(path, TINY_CARD, value_scaling="minmax") as source:
        assert "red 257-65,535" in source.scaling_line, source.scaling_line


# --- the warning under card -------------------------------------------------------------------------------


def warnings_for(path: Path, caplog: pytest.LogCaptureFixture, **options: object) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING), RasterSource.open(path, TINY_CARD, **options):  # type: ignore[arg-type]
        pass
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_16_bit_signed_and_reflectance_imagery_is_warned_about_with_the_option_that_fits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = twin_images()
    cases = {
        "u16.tif": image.astype(np.uint16) * 257,
        "i16.tif": image.astype(np.int16) * 8 - 1000,
        "reflectance.tif": (image / 255.0).astype(np.float32),
    }
    for name, data in cases.items():
        found = warnings_for(write(tmp_path / name, data), caplog)
        assert len(found) == 1, (name, found)
        assert "VALUE_SCALING percentile" in found[0] and "VALUE_SCALING minmax" in found[0], found[0]
        assert "--" not in found[0]  # one spelling in the engine: QGIS shows it as it is
        cli = for_command_line(found[0])
        assert "--value-scaling percentile" in cli and "--value-scaling minmax" in cli and "VALUE_SCALING" not in cli


def test_no_false_warning_for_float_or_16_bit_values_already_in_the_card_range(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = twin_images()
    assert warnings_for(write(tmp_path / "f32.tif", image.astype(np.float32)), caplog) == []
    assert warnings_for(write(tmp_path / "u16.tif", image.astype(np.uint16)), caplog) == []
    assert warnings_for(write(tmp_path / "u8.tif", image), caplog) == []


def test_no_card_warning_once_a_scaling_is_chosen(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "u16.tif", twin_images().astype(np.uint16) * 257)
    assert warnings_for(path, caplog, value_scaling="percentile") == []


# --- options ------------------------------------------------------------------------------------------------


def test_unknown_value_scaling_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="card, minmax, percentile"):
        SegmentationRequest(tmp_path / "in.tif", tmp_path / "out.tif", value_scaling="auto")  # type: ignore[arg-type]
    err = io.StringIO()
    code = main(["segment", "in.tif", "-o", "out.tif", "--value-scaling", "auto"], stdout=io.StringIO(), stderr=err)
    assert code == EXIT_BAD_INPUT


def test_the_command_line_takes_value_scaling_and_says_the_ranges(tmp_path: Path, brightness_model: Path) -> None:
    image = twin_images()
    path = write(tmp_path / "u16.tif", image.astype(np.uint16) * 257)
    err = io.StringIO()
    argv = ["segment", str(path), "-o", str(tmp_path / "c.tif"), "--model", str(brightness_model), "-q",
            "--value-scaling", "percentile"]  # fmt: skip
    assert main(argv, stdout=io.StringIO(), stderr=err) == 0, err.getvalue()
    assert "Value scaling percentile (2-98 % of each band" in err.getvalue()
    assert "WARNING" not in err.getvalue()

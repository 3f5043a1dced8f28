"""evaluate_rasters on tiny generated class rasters, against confusion matrices counted by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.transform import from_origin

import engine
from engine.errors import CanceledError, InvalidInputError, InvalidRasterError
from engine.evaluation import evaluate_rasters, raster_pair, read_category_names
from engine.evaluation.raster_pair import accumulate_confusion
from tests.engine.tiny_assets import ORIGIN, TINY_CLASSES

# Prediction nodata is 7 (declared) and 255 (always); reference nodata is 4.
PRED = np.array([[0, 1, 1, 2], [0, 0, 255, 2], [1, 1, 2, 7]], dtype=np.uint8)
REF = np.array([[0, 1, 0, 2], [0, 1, 1, 2], [1, 4, 2, 2]], dtype=np.uint8)
# Counted by hand from the arrays: (1, 2) pred 255, (2, 3) pred nodata 7 and (2, 1) ref nodata 4 are not scored.
# Rows = reference, columns = prediction.
CONFUSION = [[2, 1, 0], [1, 2, 0], [0, 0, 3]]
# With reference value 0 ignored, its row goes; prediction 0 still occurs (column), so 3 classes remain.
CONFUSION_IGNORE_0 = [[0, 0, 0], [1, 2, 0], [0, 0, 3]]

PAM_TEMPLATE = """<PAMDataset>
  <PAMRasterBand band="1">
    <CategoryNames>
{categories}
    </CategoryNames>
  </PAMRasterBand>
</PAMDataset>
"""


class Recorder:
    """Progress reporter that records fractions and can ask to cancel."""

    def __init__(self, cancel: bool = False) -> None:
        self.fractions: list[float] = []
        self.cancel = cancel

    def set_progress(self, fraction: float) -> None:
        self.fractions.append(fraction)

    def is_canceled(self) -> bool:
        return self.cancel

    def log(self, message: str) -> None:
        pass


def write_categories(raster: Path, names: list[str]) -> None:
    """The sidecar exactly as GDAL's SetCategoryNames writes it for a GeoTIFF (empty names included)."""
    lines = "\n".join(f"      <Category>{name}</Category>" if name else "      <Category></Category>" for name in names)
    raster.with_name(raster.name + ".aux.xml").write_text(PAM_TEMPLATE.format(categories=lines), encoding="utf-8")


@pytest.fixture
def pair(make_geotiff) -> tuple[Path, Path]:
    return make_geotiff(PRED, name="pred.tif", nodata=7), make_geotiff(REF, name="ref.tif", nodata=4)


def test_matrix_and_scores_match_the_hand_count(pair: tuple[Path, Path]) -> None:
    result = evaluate_rasters(*pair)
    metrics = result.metrics
    np.testing.assert_array_equal(metrics.confusion, CONFUSION)
    assert metrics.class_names == ("0", "1", "2") and result.class_name_source == "indices"
    # class 0: TP 2, FP 1, FN 1 -> IoU 2/4; class 1 the same; class 2 TP 3 only -> 1
    assert metrics.iou == pytest.approx((0.5, 0.5, 1.0))
    assert metrics.oa == pytest.approx(7 / 9)
    assert metrics.pixel_count == 9


def test_ignored_reference_value_is_not_scored(pair: tuple[Path, Path]) -> None:
    result = evaluate_rasters(*pair, ignore_index=0)
    np.testing.assert_array_equal(result.metrics.confusion, CONFUSION_IGNORE_0)
    assert result.ignore_index == 0
    assert result.metrics.oa == pytest.approx(5 / 6)


def test_value_255_is_never_scored_even_without_declared_nodata(make_geotiff) -> None:
    pred = make_geotiff(np.array([[0, 255], [1, 1]], np.uint8), name="p.tif")
    ref = make_geotiff(np.array([[0, 1], [1, 0]], np.uint8), name="r.tif")
    np.testing.assert_array_equal(evaluate_rasters(pred, ref).metrics.confusion, [[1, 1], [0, 1]])


def test_small_blocks_give_the_same_matrix_and_report_progress_to_the_end(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raster_pair, "BLOCK_ROWS", 2)
    monkeypatch.setattr(raster_pair, "BLOCK_COLS", 3)
    progress = Recorder()
    matrix = accumulate_confusion(*pair, progress=progress)
    np.testing.assert_array_equal(matrix[:3, :3], CONFUSION)
    assert matrix.shape == (256, 256) and matrix.sum() == 9
    # 3 x 4 pixels in blocks of 2 x 3: rows (2, 1) times columns (3, 1) = 4 blocks of 6, 2, 3 and 1 pixels
    assert progress.fractions == pytest.approx([6 / 12, 8 / 12, 11 / 12, 1.0])


def test_cancel_stops_before_reading(pair: tuple[Path, Path]) -> None:
    with pytest.raises(CanceledError):
        evaluate_rasters(*pair, progress=Recorder(cancel=True))


def test_rasters_of_different_sizes_are_refused_with_the_fix(make_geotiff, pair: tuple[Path, Path]) -> None:
    other = make_geotiff(np.zeros((4, 4), np.uint8), name="other.tif")
    with pytest.raises(InvalidRasterError, match=r"Prediction is 4 x 3 pixels but the reference is 4 x 4.*warp"):
        evaluate_rasters(pair[0], other)


def test_rasters_in_different_crs_are_refused(make_geotiff, pair: tuple[Path, Path]) -> None:
    other = make_geotiff(REF, name="other.tif", crs="EPSG:32639")
    with pytest.raises(InvalidRasterError, match=r"EPSG:32640 but the reference is in EPSG:32639.*warp"):
        evaluate_rasters(pair[0], other)


def test_shifted_grid_of_the_same_size_is_refused(make_geotiff, pair: tuple[Path, Path]) -> None:
    half_pixel = from_origin(ORIGIN[0] + 0.25, ORIGIN[1], 0.5, 0.5)  # fixture rasters have 0.5 m pixels
    other = make_geotiff(REF, name="other.tif", transform=half_pixel)
    with pytest.raises(InvalidRasterError, match=r"not the same pixel grid.*column -0\.500.*warp"):
        evaluate_rasters(pair[0], other)


def test_rounding_in_the_transform_is_the_same_grid(make_geotiff, pair: tuple[Path, Path]) -> None:
    nearly = Affine(0.5, 0.0, ORIGIN[0] + 1e-6, 0.0, -0.5, ORIGIN[1])
    other = make_geotiff(REF, name="other.tif", transform=nearly, nodata=4)
    np.testing.assert_array_equal(evaluate_rasters(pair[0], other).metrics.confusion, CONFUSION)


def test_missing_raster_is_named_by_its_role(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    with pytest.raises(InvalidRasterError, match=r"Reference raster '.*nope\.tif' does not exist"):
        evaluate_rasters(pair[0], tmp_path / "nope.tif")
    with pytest.raises(InvalidRasterError, match=r"Prediction raster '.*nope\.tif' does not exist"):
        evaluate_rasters(tmp_path / "nope.tif", pair[1])


def test_corrupt_raster_is_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(InvalidRasterError, match="Cannot open the reference raster"):
        evaluate_rasters(pair[0], corrupt)


def test_class_names_come_from_the_prediction_categories(pair: tuple[Path, Path]) -> None:
    write_categories(pair[0], ["water", "", "city", ""])  # GDAL pads with empty names
    result = evaluate_rasters(*pair)
    assert result.metrics.class_names == ("water", "1", "city")
    assert result.class_name_source == "categories"


def test_class_names_from_a_vrt(tmp_path: Path) -> None:
    vrt = tmp_path / "classes.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="2" rasterYSize="2"><VRTRasterBand dataType="Byte" band="1">'
        "<CategoryNames><Category>a</Category><Category>b &amp; c</Category></CategoryNames>"
        "</VRTRasterBand></VRTDataset>",
        encoding="utf-8",
    )
    assert read_category_names(vrt) == ("a", "b & c")
    assert read_category_names(tmp_path / "plain.tif") is None


def test_class_names_come_from_the_model_card_first(pair: tuple[Path, Path], tiny_model_files) -> None:
    write_categories(pair[0], ["x", "y", "z"])
    result = evaluate_rasters(*pair, model_path=tiny_model_files.onnx_path)
    assert result.metrics.class_names == TINY_CLASSES and result.class_name_source == "model"


def test_too_few_class_names_are_refused_with_the_fix(pair: tuple[Path, Path]) -> None:
    write_categories(pair[0], ["water", "trees"])
    with pytest.raises(InvalidInputError, match="hold class 2, but only 2 class names are known; pick the right MODEL"):
        evaluate_rasters(*pair)


def test_nothing_scored_without_names_says_what_to_check(make_geotiff) -> None:
    pred = make_geotiff(np.full((2, 2), 255, np.uint8), name="p.tif")
    ref = make_geotiff(np.zeros((2, 2), np.uint8), name="r.tif")
    with pytest.raises(InvalidInputError, match=r"No pixel .* could be scored.*nodata"):
        evaluate_rasters(pred, ref)


def test_entry_points_are_public_engine_names() -> None:
    assert engine.evaluate_rasters is evaluate_rasters
    assert {"evaluate_rasters", "write_report", "EvaluationResult"} <= set(engine.__all__)

"""The segmentation pipeline: streaming tile loop, bounded memory, and end-to-end runs on tiny rasters."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from numpy.typing import NDArray
from rasterio.windows import Window

from engine.errors import CanceledError, InvalidInputError, InvalidRasterError, OutputPathError
from engine.inference.pipeline import (
    SegmentationRequest,
    make_predictor,
    resolve_tiling,
    segment_raster,
    stitch_raster,
)
from engine.inference.tiling import TilingSpec, tile_count, tile_grid_shape
from engine.model_card import NODATA_CLASS
from engine.option_names import for_command_line
from engine.raster.write_behind import WriteBehind
from tests.engine.pipeline_helpers import (
    TINY_CARD,
    ArraySource,
    RecordingWriter,
    SoftmaxBackend,
    build_tiny_onnx,
    expected_probs,
    make_image,
    write_raster,
)


class RecordingProgress:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.fractions: list[float] = []
        self.cancel_after = cancel_after
        self.polls = 0

    def set_progress(self, fraction: float) -> None:
        self.fractions.append(fraction)

    def is_canceled(self) -> bool:
        self.polls += 1
        return self.cancel_after is not None and self.polls > self.cancel_after


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


def normalised(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    mean = np.asarray(TINY_CARD.norm_mean, np.float32)[:, None, None]
    std = np.asarray(TINY_CARD.norm_std, np.float32)[:, None, None]
    return ((image.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


# --- the tile loop with in-memory fakes ---------------------------------------------------------------------


@pytest.mark.parametrize("stitching", ["gaussian", "cosine", "center_crop"])
def test_stitched_rows_arrive_in_order_once_and_match_a_pointwise_model(stitching: str) -> None:
    image = make_image(77, 45, seed=1)
    source = ArraySource(normalised(image))
    writer = RecordingWriter(width=45)
    backend = SoftmaxBackend()
    spec = TilingSpec(16, 6)
    stats = stitch_raster(source, writer, make_predictor(backend, 3), spec, 3, stitching, batch_size=3)
    probs, valid = writer.stacked()
    assert writer.next_row == 77 and valid.all()
    assert max(p.shape[1] for _, p, _ in writer.chunks) <= spec.tile_size_px  # never more than a strip
    np.testing.assert_allclose(probs, expected_probs(image), atol=1e-5)
    assert stats.valid_pixel_count == 77 * 45
    assert max(backend.batch_sizes) <= 3 and sum(backend.batch_sizes) == tile_count(77, 45, spec)


def test_tiles_without_valid_pixels_never_reach_the_model() -> None:
    image = make_image(64, 64, seed=2)
    valid = np.zeros((64, 64), bool)
    valid[40:, 40:] = True  # only the bottom-right corner has data
    source = ArraySource(normalised(image), valid)
    writer = RecordingWriter(width=64)
    backend = SoftmaxBackend()
    spec = TilingSpec(16, 0)  # 4 x 4 tiles; rows/cols 32..63 of tiles 2, 3 -> tiles touching [40:, 40:]
    stats = stitch_raster(source, writer, make_predictor(backend, 3), spec, 3, "gaussian", batch_size=1)
    assert stats.tile_count == 16
    assert stats.tiles_run == 4 and sum(backend.batch_sizes) == 4
    probs, out_valid = writer.stacked()
    np.testing.assert_array_equal(out_valid, valid)
    assert np.all(probs[:, ~valid] == 0)
    assert stats.valid_pixel_count == int(valid.sum())


def test_peak_memory_does_not_grow_with_raster_height() -> None:
    def peak_bytes(height: int) -> int:
        source = ArraySource(np.zeros((3, 1, 1), np.float32))
        source.height, source.width = height, 96  # reads are zero tiles; the image itself is not allocated

        def read_tile(window):
            return np.zeros((3, 32, 32), np.float32), np.ones((32, 32), bool)

        source.read_tile = read_tile  # type: ignore[method-assign]

        class NullWriter:
            def write_rows(self, row_off, probs, valid) -> None:
                pass

        tracemalloc.start()
        try:
            stitch_raster(source, NullWriter(), make_predictor(SoftmaxBackend(), 3), TilingSpec(32, 8), 3)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, tall = peak_bytes(64), peak_bytes(64 * 40)
    strip = 4 * 32 * 96 * 4  # (K + 1) float32 planes of one tile row
    assert tall < short + strip // 2, (short, tall)
    full_size_probs = 3 * 64 * 40 * 96 * 4
    assert tall < full_size_probs / 4  # strips and one batch of tiles, never a full-size array


def test_cancel_between_batches_raises() -> None:
    source = ArraySource(normalised(make_image(40, 40)))
    progress = RecordingProgress(cancel_after=1)
    backend = SoftmaxBackend()
    with pytest.raises(CanceledError, match="canceled"):
        stitch_raster(source, RecordingWriter(40), make_predictor(backend, 3), TilingSpec(16, 4), 3, progress=progress)
    assert sum(backend.batch_sizes) < tile_count(40, 40, TilingSpec(16, 4))


def test_flip_tta_averages_unflipped_predictions() -> None:
    class ColumnBackend:
        """Not translation-equivariant: class-0 probability grows with the column index."""

        name, device, device_reason = "fake", "cpu", "test"

        def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
            b, _, h, w = batch.shape
            p0 = np.broadcast_to(np.linspace(0.1, 0.9, w, dtype=np.float32), (b, h, w))
            return np.stack([p0, 1 - p0], axis=1).astype(np.float32)

    batch = np.zeros((2, 3, 4, 5), np.float32)
    plain = make_predictor(ColumnBackend(), 2, "none")(batch)
    tta = make_predictor(ColumnBackend(), 2, "flip")(batch)
    ramp = np.linspace(0.1, 0.9, 5)
    # identity and vertical flip keep the ramp; the horizontal flip mirrors it back onto itself reversed.
    np.testing.assert_allclose(tta[0, 0, 0], (2 * ramp + ramp[::-1]) / 3, atol=1e-6)
    np.testing.assert_allclose(plain[0, 0, 0], ramp, atol=1e-6)


def test_model_output_with_the_wrong_class_count_is_reported() -> None:
    predictor = make_predictor(SoftmaxBackend(), num_classes=5)
    with pytest.raises(InvalidInputError, match="class list"):
        predictor(np.zeros((1, 3, 8, 8), np.float32))


def test_tile_size_not_fitting_the_model_names_the_nearest_valid_size(tmp_path: Path) -> None:
    request = SegmentationRequest(tmp_path / "in.tif", tmp_path / "out.tif", tile_size_px=30)
    with pytest.raises(InvalidInputError, match="multiple of 8 px; use a tile size of 32 px"):
        resolve_tiling(request, TINY_CARD)
    assert resolve_tiling(SegmentationRequest(tmp_path / "a", tmp_path / "b"), TINY_CARD) == TilingSpec(32, 8)
    # A smaller tile than the card's keeps the overlap below half a tile.
    assert (
        resolve_tiling(SegmentationRequest(tmp_path / "a", tmp_path / "b", tile_size_px=16), TINY_CARD).overlap_px == 4
    )


def test_request_rejects_unknown_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="stitching"):
        SegmentationRequest(tmp_path / "a", tmp_path / "b", stitching="max")
    with pytest.raises(InvalidInputError, match="none, flip, d4"):
        SegmentationRequest(tmp_path / "a", tmp_path / "b", tta="ms")
    with pytest.raises(InvalidInputError, match="Batch size"):
        SegmentationRequest(tmp_path / "a", tmp_path / "b", batch_size=0)


# --- end to end through raster_io and the real backends ---------------------------------------------------------


def test_segment_raster_writes_classes_and_heatmaps_of_the_model(
    tmp_path: Path, tiny_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    image = make_image(70, 53, seed=3)
    raster = write_raster(tmp_path / "in.tif", image)
    progress = RecordingProgress()
    request = SegmentationRequest(
        raster, tmp_path / "classes.tif", tmp_path / "heat.tif", model_path=tiny_onnx, backend="onnxruntime",
        device="cpu", tile_size_px=24, overlap_px=8, batch_size=2,
    )  # fmt: skip
    result = segment_raster(request, progress=progress)
    probs = expected_probs(image)
    with rasterio.open(result.output_path) as dataset:
        classes = dataset.read(1)
        tags = dataset.tags()
        assert dataset.crs.to_epsg() == 32640 and dataset.shape == (70, 53)
    np.testing.assert_array_equal(classes, probs.argmax(axis=0))
    with rasterio.open(tmp_path / "heat.tif") as dataset:
        heat = dataset.read().astype(np.float64) * np.asarray(dataset.scales)[:, None, None]
    np.testing.assert_allclose(heat, probs, atol=2e-4)
    assert tags["model_sha256"] == result.model_sha256 and len(result.model_sha256) == 64
    assert tags["tile_size_px"] == "24" and tags["overlap_px"] == "8" and tags["backend"] == "onnxruntime"
    assert result.class_pixel_counts == tuple(np.bincount(probs.argmax(axis=0).ravel(), minlength=3))
    assert result.valid_pixel_count == 70 * 53
    assert progress.fractions == sorted(progress.fractions) and progress.fractions[-1] == 1.0
    said = [r.getMessage() for r in caplog.records if r.name.startswith("engine")]
    assert sum("onnxruntime" in m and "cpu" in m for m in said) == 1  # once, through logging only


def test_result_does_not_depend_on_tile_size_or_stitching(tmp_path: Path, tiny_onnx: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(45, 66, seed=4))
    outputs = []
    for tile, overlap, stitching in [(16, 4, "gaussian"), (40, 16, "cosine"), (64, 8, "center_crop")]:
        out = tmp_path / f"c{tile}.tif"
        request = SegmentationRequest(
            raster, out, model_path=tiny_onnx, tile_size_px=tile, overlap_px=overlap, stitching=stitching
        )
        segment_raster(request, backend=SoftmaxBackend())
        with rasterio.open(out) as dataset:
            outputs.append(dataset.read(1))
    for other in outputs[1:]:
        np.testing.assert_array_equal(other, outputs[0])


def test_nodata_pixels_get_the_nodata_class(tmp_path: Path, tiny_onnx: Path) -> None:
    image = make_image(40, 40, seed=5)
    image[:, :10, :] = 0
    raster = write_raster(tmp_path / "in.tif", image, nodata=0)
    out = tmp_path / "classes.tif"
    result = segment_raster(SegmentationRequest(raster, out, model_path=tiny_onnx), backend=SoftmaxBackend())
    with rasterio.open(out) as dataset:
        classes = dataset.read(1)
        assert dataset.nodata == NODATA_CLASS
    assert np.all(classes[:10] == NODATA_CLASS)
    np.testing.assert_array_equal(classes[10:], expected_probs(image)[:, 10:].argmax(axis=0))
    assert result.valid_pixel_count == 30 * 40


def test_all_nodata_input_is_rejected_and_leaves_no_output(tmp_path: Path, tiny_onnx: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", np.zeros((3, 20, 20), np.uint8), nodata=0)
    out = tmp_path / "classes.tif"
    backend = SoftmaxBackend()
    with pytest.raises(InvalidRasterError, match="contains no valid pixels"):
        segment_raster(SegmentationRequest(raster, out, tmp_path / "h.tif", model_path=tiny_onnx), backend=backend)
    assert backend.batch_sizes == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_cancel_leaves_nothing_at_the_output_paths(tmp_path: Path, tiny_onnx: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(64, 64))
    request = SegmentationRequest(
        raster, tmp_path / "c.tif", tmp_path / "h.tif", model_path=tiny_onnx, tile_size_px=16, batch_size=1
    )
    with pytest.raises(CanceledError):
        segment_raster(request, progress=RecordingProgress(cancel_after=3), backend=SoftmaxBackend())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_raster_smaller_than_a_tile_and_without_georeference(
    tmp_path: Path, tiny_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    image = make_image(9, 13, seed=6)
    raster = write_raster(tmp_path / "plain.tif", image, georeferenced=False)
    progress = RecordingProgress()
    out = tmp_path / "c.tif"
    segment_raster(SegmentationRequest(raster, out, model_path=tiny_onnx), progress=progress, backend=SoftmaxBackend())
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(1), expected_probs(image).argmax(axis=0))
    said = [r.getMessage() for r in caplog.records if r.name.startswith("engine")]
    assert sum("no georeference" in m for m in said) == 1  # said once (it used to be said twice)


def test_unwritable_output_folder_fails_before_any_work(tmp_path: Path, tiny_onnx: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(8, 8))
    backend = SoftmaxBackend()
    request = SegmentationRequest(raster, tmp_path / "in.tif" / "missing" / "c.tif", model_path=tiny_onnx)
    with pytest.raises(OutputPathError, match="does not exist and cannot be created"):
        segment_raster(request, backend=backend)
    with pytest.raises(OutputPathError, match="is the input"):
        segment_raster(SegmentationRequest(raster, raster, model_path=tiny_onnx), backend=backend)
    assert backend.batch_sizes == []


# --- write-behind --------------------------------------------------------------------------------------------


def test_write_behind_forwards_copies_in_order() -> None:
    writer = RecordingWriter(width=4)
    buffer = np.zeros((2, 3, 4), np.float32)
    with WriteBehind(writer, max_chunks=1) as behind:
        for row in range(0, 9, 3):
            buffer[:] = row  # the strip is reused: the worker must have its own copy
            behind.write_rows(row, buffer, np.ones((3, 4), bool))
    assert [r for r, _, _ in writer.chunks] == [0, 3, 6]
    assert [float(p[0, 0, 0]) for _, p, _ in writer.chunks] == [0.0, 3.0, 6.0]


def test_write_behind_reraises_the_worker_error() -> None:
    class FailingWriter:
        def write_rows(self, row_off, probs, valid) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), WriteBehind(FailingWriter(), max_chunks=1) as behind:
        for row in range(20):
            behind.write_rows(row, np.zeros((1, 1, 2), np.float32), np.ones((1, 2), bool))


def test_a_failing_writer_leaves_no_output(tmp_path: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.raster.writer

    def fail(self, row_off, probs, valid) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(engine.raster.writer.SegmentationWriter, "write_rows", fail)
    raster = write_raster(tmp_path / "in.tif", make_image(40, 40))
    request = SegmentationRequest(raster, tmp_path / "c.tif", tmp_path / "h.tif", model_path=tiny_onnx)
    with pytest.raises(OSError, match="disk full"):
        segment_raster(request, backend=SoftmaxBackend())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_d4_tta_averages_the_eight_dihedral_views_mapped_back() -> None:
    class CornerBackend:
        """Class 0 only at the top-left pixel of whatever tile it sees: the views move that pixel around."""

        name, device, device_reason = "fake", "cpu", "test"

        def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
            b, _, h, w = batch.shape
            p0 = np.zeros((b, h, w), np.float32)
            p0[:, 0, 0] = 1.0
            return np.stack([p0, 1 - p0], axis=1)

    probs = make_predictor(CornerBackend(), 2, "d4")(np.zeros((1, 3, 4, 4), np.float32))
    # Each of the 8 views puts the marked pixel on one of the 4 corners of the original tile, each corner twice
    # (a rotation alone and a flip followed by a rotation), so every corner gets 2/8 and the rest 0.
    expected = np.zeros((4, 4), np.float32)
    expected[[0, 0, 3, 3], [0, 3, 0, 3]] = 0.25
    np.testing.assert_allclose(probs[0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


# --- models with a fixed input size, tile clamps, broken outputs (issue 12) ------------------------------------


def test_a_fixed_size_onnx_model_sets_the_tile_size_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.engine.pipeline_helpers import build_fixed_size_onnx

    model = build_fixed_size_onnx(tmp_path / "fixed.onnx", size_px=24, batch=1)
    image = make_image(50, 61, seed=12)
    raster = write_raster(tmp_path / "in.tif", image)
    progress = RecordingProgress()
    out = tmp_path / "c.tif"
    # batch 3: the model takes exactly one tile per call, the backend splits (and pads) every batch
    with caplog.at_level("INFO", logger="engine"):
        segment_raster(
            SegmentationRequest(raster, out, model_path=model, batch_size=3, num_threads=1), progress=progress
        )
    with rasterio.open(out) as dataset:
        np.testing.assert_array_equal(dataset.read(1), expected_probs(image).argmax(axis=0))
        assert dataset.tags()["tile_size_px"] == "24"
    assert sum("fixed 24 px square input" in r.getMessage() for r in caplog.records) == 1


def test_a_tile_size_other_than_the_fixed_input_is_one_clear_error(tmp_path: Path) -> None:
    from tests.engine.pipeline_helpers import build_fixed_size_onnx

    model = build_fixed_size_onnx(tmp_path / "fixed.onnx", size_px=24)
    raster = write_raster(tmp_path / "in.tif", make_image(30, 30))
    request = SegmentationRequest(raster, tmp_path / "c.tif", model_path=model, tile_size_px=32)
    with pytest.raises(InvalidInputError, match=r"fixed 24 x 24 px input, so tiles must be 24 px, not 32; use "
                                                r"TILE_SIZE 0 \(or TILE_SIZE 24\)") as caught:  # fmt: skip
        segment_raster(request)
    assert "use no --tile-size (or --tile-size 24)" in for_command_line(str(caught.value))  # the CLI's spelling
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.onnx", "in.tif"]


@pytest.mark.parametrize(("tile", "expected"), [(100_000, 64), (4096, 64), (64, 64), (40, 40)])
def test_a_tile_larger_than_the_raster_is_clamped_to_the_smallest_that_covers_it(
    tmp_path: Path, tiny_onnx: Path, tile: int, expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    image = make_image(41, 57, seed=13)  # covered by 64 px, the next multiple of the card's divisor 8
    raster = write_raster(tmp_path / "in.tif", image)
    progress = RecordingProgress()
    backend = SoftmaxBackend()
    out = tmp_path / "c.tif"
    request = SegmentationRequest(raster, out, model_path=tiny_onnx, tile_size_px=tile, overlap_px=16)
    with caplog.at_level("INFO", logger="engine"):
        segment_raster(request, progress=progress, backend=backend)
    with rasterio.open(out) as dataset:
        assert dataset.tags()["tile_size_px"] == str(expected)
        np.testing.assert_array_equal(dataset.read(1), expected_probs(image).argmax(axis=0))
    said = [r.getMessage() for r in caplog.records if "is larger than the 57 x 41 px processing grid" in r.getMessage()]
    assert len(said) == (1 if tile > expected else 0)
    if said:
        assert f"TILE_SIZE {tile}" in said[0] and f"using {expected} px" in said[0]
        assert f"--tile-size {tile}" in for_command_line(said[0])


def test_nan_outputs_fail_naming_their_share_and_write_nothing(tmp_path: Path, tiny_onnx: Path) -> None:
    class QuarterNan(SoftmaxBackend):
        def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
            probs = super().predict(batch)
            probs[:, :, : batch.shape[2] // 4] = np.nan  # the top quarter of every tile
            return probs

    raster = write_raster(tmp_path / "in.tif", make_image(32, 32))
    request = SegmentationRequest(raster, tmp_path / "c.tif", tmp_path / "h.tif", model_path=tiny_onnx)
    with pytest.raises(InvalidInputError, match=r"NaN or infinite values for 25\.0 % of its outputs"):
        segment_raster(request, backend=QuarterNan())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_a_model_outputting_infinity_everywhere_fails_with_100_percent(tmp_path: Path, tiny_onnx: Path) -> None:
    class Infinite(SoftmaxBackend):
        def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
            return np.full((batch.shape[0], 3, *batch.shape[2:]), np.inf, np.float32)

    raster = write_raster(tmp_path / "in.tif", make_image(16, 16))
    with pytest.raises(InvalidInputError, match="100 % of its outputs"):
        segment_raster(SegmentationRequest(raster, tmp_path / "c.tif", model_path=tiny_onnx), backend=Infinite())


def write_nan_raster(path: Path, image: NDArray[np.float32], res_m: float) -> Path:
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "count": 3, "height": image.shape[1], "width": image.shape[2], "dtype": "float32"}
    with rasterio.open(
        path, "w", crs="EPSG:32640", transform=from_origin(500000, 2800000, res_m, res_m), nodata=np.nan, **profile
    ) as dst:
        dst.write(image)
    return path


def test_an_all_nodata_raster_after_resampling_exits_with_no_valid_pixels(tmp_path: Path) -> None:
    model = build_tiny_onnx(tmp_path / "tiny1m.onnx", TINY_CARD.replace(gsd_m=1.0))
    raster = write_nan_raster(tmp_path / "all-nodata.tif", np.full((3, 40, 40), np.nan, np.float32), res_m=0.5)
    request = SegmentationRequest(raster, tmp_path / "c.tif", tmp_path / "h.tif", model_path=model)
    with pytest.raises(InvalidRasterError, match="contains no valid pixels"):
        segment_raster(request)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all-nodata.tif", "tiny1m.onnx"]


def test_nan_nodata_stays_invalid_on_the_resampled_grid(tmp_path: Path) -> None:
    model = build_tiny_onnx(tmp_path / "tiny1m.onnx", TINY_CARD.replace(gsd_m=1.0))
    image = make_image(40, 48, seed=14).astype(np.float32)
    image[:, :16] = np.nan
    raster = write_nan_raster(tmp_path / "in.tif", image, res_m=0.5)
    from engine.raster.reader import RasterSource

    with RasterSource.open(raster, TINY_CARD.replace(gsd_m=1.0)) as source:
        assert source.resampled
        _, valid = source.read_tile(Window(0, 0, source.width, source.height))
    assert not valid[:8].any() and valid[8:].all()  # before: NaN nodata read as valid zeros on the warped grid
    result = segment_raster(SegmentationRequest(raster, tmp_path / "c.tif", model_path=model))
    with rasterio.open(tmp_path / "c.tif") as dataset:
        classes = dataset.read(1)
    assert np.all(classes[:16] == NODATA_CLASS) and np.all(classes[16:] != NODATA_CLASS)
    assert result.valid_pixel_count == 24 * 48


def test_a_raster_without_georeference_keeps_its_pixel_grid_exactly(tmp_path: Path, tiny_onnx: Path) -> None:
    from osgeo import gdal  # independent reader

    raster = write_raster(tmp_path / "plain.tif", make_image(20, 30), georeferenced=False)
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    segment_raster(SegmentationRequest(raster, out, heat, model_path=tiny_onnx), backend=SoftmaxBackend())
    for path in (raster, out, heat):
        dataset = gdal.Open(str(path))
        # No geotransform at all, as in the input: QGIS then draws input and outputs on the same pixel grid.
        assert dataset.GetGeoTransform(can_return_null=True) is None, path
        assert (dataset.RasterXSize, dataset.RasterYSize) == (30, 20)
        dataset = None


def test_batch_size_is_one_on_a_cpu_and_a_memory_budget_on_a_gpu(tmp_path: Path, tiny_onnx: Path) -> None:
    from engine.inference.pipeline import GPU_BATCH_TILE_PIXELS, auto_batch_size

    assert auto_batch_size("cpu", 512) == 1
    assert auto_batch_size("cuda", 512) == GPU_BATCH_TILE_PIXELS // 512**2 == 8
    assert auto_batch_size("cuda", 256) == 32 and auto_batch_size("cuda", 128) == 32  # capped
    assert auto_batch_size("cuda", 2048) == 1
    sizes: list[int] = []

    class CountingBackend(SoftmaxBackend):
        def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
            sizes.append(batch.shape[0])
            return super().predict(batch)

    raster = write_raster(tmp_path / "in.tif", make_image(40, 40, seed=6))
    request = SegmentationRequest(raster, tmp_path / "c.tif", model_path=tiny_onnx, tile_size_px=16, overlap_px=4)
    segment_raster(request, backend=CountingBackend())
    # The grid reaches 2 px (half the overlap) beyond every edge: 44 px hold 4 tiles of 16 px every 12 px.
    assert set(sizes) == {1} and len(sizes) == tile_count(44, 44, TilingSpec(16, 4)) == 16
    with rasterio.open(tmp_path / "c.tif") as dataset:
        assert dataset.tags()["batch_size"] == "1"


def test_anchored_grid_runs_at_most_one_more_tile_row_and_column(tmp_path: Path, tiny_onnx: Path) -> None:
    image = make_image(47, 66, seed=4)
    raster = write_raster(tmp_path / "in.tif", image)  # 0.5 m pixels from (500000, 2800000)
    results = {}
    for grid in ("raster", "anchored"):
        request = SegmentationRequest(
            raster, tmp_path / f"{grid}.tif", model_path=tiny_onnx, tile_size_px=16, overlap_px=4, tile_grid=grid
        )
        results[grid] = segment_raster(request, backend=SoftmaxBackend())
        with rasterio.open(tmp_path / f"{grid}.tif") as dataset:
            np.testing.assert_array_equal(dataset.read(1), expected_probs(image).argmax(axis=0))  # a pointwise model
            assert dataset.tags()["tile_grid"] == grid
    # The raster grid reaches 2 px (half the overlap) beyond every edge: 51 x 70 px hold 4 x 6 tiles.
    assert tile_grid_shape(51, 70, TilingSpec(16, 4)) == (4, 6)
    assert results["raster"].tile_count == 4 * 6
    # Stride 12: the first row is row -5,600,000 of the CRS lattice (rows count southwards) and the first column
    # column 1,000,000, so the anchored grid starts (-5,600,000) mod 12 = 4 rows and 1,000,000 mod 12 = 4 columns
    # before the raster (and still ends 2 px beyond it): 53 x 72 px hold 5 x 6 tiles.
    assert results["anchored"].tile_count == 5 * 6


def test_in_memory_tiles_are_mirrored_outside_the_image_like_raster_tiles() -> None:
    from rasterio.windows import Window

    from engine.inference.in_memory import ArrayTileSource

    image = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)
    tile, valid = ArrayTileSource(image).read_tile(Window(-2, 3, 6, 4))  # columns -2..3, rows 3..6
    rows, cols = [3, 4, 3, 2], [2, 1, 0, 1, 2, 3]  # rows 5, 6 mirror 3, 2; columns -2, -1 mirror 2, 1
    np.testing.assert_array_equal(tile, image[:, rows][:, :, cols])
    expected_valid = np.zeros((4, 6), dtype=bool)
    expected_valid[:2, 2:] = True
    np.testing.assert_array_equal(valid, expected_valid)

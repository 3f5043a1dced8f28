"""Preparers: official raw layouts (tiny fakes in tests/data) -> the canonical layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from training.prepare import PatchRecipe, axis_starts, iter_patch_windows, main, prepare

DATA = Path(__file__).resolve().parents[1] / "data"
ISPRS_COLOURS = {
    (255, 255, 255): 0,
    (0, 0, 255): 1,
    (0, 255, 255): 2,
    (0, 255, 0): 3,
    (255, 255, 0): 4,
    (255, 0, 0): 5,
}


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def expected_isprs_mask(label_path: Path) -> np.ndarray:
    """Per-pixel lookup, written independently of the vectorised code under test."""
    rgb = read_tif(label_path)
    out = np.empty(rgb.shape[1:], dtype=np.uint8)
    for y in range(rgb.shape[1]):
        for x in range(rgb.shape[2]):
            out[y, x] = ISPRS_COLOURS.get(tuple(int(v) for v in rgb[:, y, x]), 255)
    return out


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def vaihingen(tmp_path_factory):
    out = tmp_path_factory.mktemp("vaihingen")
    meta = prepare("vaihingen", DATA / "vaihingen" / "raw", out, PatchRecipe(32, 16, 32))
    return out, meta


def test_axis_starts_hand_examples():
    assert axis_starts(52, 32, 16, shift_inside=True) == [0, 16, 20]
    assert axis_starts(40, 32, 16, shift_inside=True) == [0, 8]
    assert axis_starts(50, 32, 32, shift_inside=False) == [0, 32]
    assert axis_starts(20, 32, 16, shift_inside=True) == [0]
    assert axis_starts(64, 32, 32, shift_inside=False) == [0, 32]


@given(st.integers(1, 300), st.integers(1, 64), st.integers(1, 64), st.booleans())
def test_patch_windows_cover_every_pixel(size, patch, stride, shift_inside):
    stride = min(stride, patch)
    covered = np.zeros(size, bool)
    for start in axis_starts(size, patch, stride, shift_inside):
        assert start >= 0
        if shift_inside and size >= patch:
            assert start + patch <= size
        covered[start : start + patch] = True
    assert covered.all()


def test_whole_tile_window_when_patch_is_zero():
    assert [(w.width, w.height) for w in iter_patch_windows(7, 9, 0, 0, True)] == [(9, 7)]


def test_vaihingen_splits_follow_paper_protocol(vaihingen):
    out, meta = vaihingen
    assert meta["splits"]["train"]["tiles"] == ["area1", "area3"]
    assert meta["splits"]["val"]["tiles"] == ["area30"]
    assert meta["splits"]["test"]["tiles"] == ["area2"]
    assert meta["band_names"] == ["nir", "red", "green"]
    assert meta["eval_classes"] == [0, 1, 2, 3, 4]
    assert meta["ignore_index"] == 255
    # area1 40x52: rows {0, 8} x cols {0, 16, 20}; area3 36x36: {0, 4} x {0, 4}
    assert meta["splits"]["train"]["patches"] == 6 + 4
    assert len(list((out / "train" / "images").glob("*.tif"))) == 10
    saved = json.loads((out / "meta.json").read_text())
    assert saved["splits"] == meta["splits"]
    assert {s["file"] for s in saved["sources"]} >= {"top_mosaic_09cm_area2_noBoundary.tif"}
    assert all(len(s["sha256"]) == 64 for s in saved["sources"])


def test_vaihingen_train_masks_use_complete_labels_and_ignore_unknown_colours(vaihingen):
    out, meta = vaihingen
    raw_label = DATA / "vaihingen" / "raw" / "gts_complete" / "top_mosaic_09cm_area1.tif"
    expected = expected_isprs_mask(raw_label)
    mask = png(out / "train" / "masks" / "area1_16_8_48_40.png")
    np.testing.assert_array_equal(mask, expected[8:40, 16:48])
    corner = png(out / "train" / "masks" / "area1_0_0_32_32.png")
    assert corner[0, 0] == 255  # the one unknown colour
    assert meta["unknown_label_px"] == 1


def test_vaihingen_test_patches_use_eroded_labels_and_pad_with_ignore(vaihingen):
    out, _ = vaihingen
    expected = expected_isprs_mask(DATA / "vaihingen" / "raw" / "gts_eroded" / "top_mosaic_09cm_area2_noBoundary.tif")
    assert (expected == 255).any()  # boundaries are ignored
    # area2 is 50 x 41: the bottom-right patch holds 18 x 9 real pixels
    mask = png(out / "test" / "masks" / "area2_32_32_64_64.png")
    assert mask.shape == (32, 32)
    np.testing.assert_array_equal(mask[:18, :9], expected[32:, 32:])
    assert (mask[18:, :] == 255).all() and (mask[:, 9:] == 255).all()
    image = read_tif(out / "test" / "images" / "area2_32_32_64_64.tif")
    assert (image[:, 18:, :] == 0).all()


def test_patch_images_keep_pixels_and_georeference(vaihingen):
    out, _ = vaihingen
    raw = DATA / "vaihingen" / "raw" / "top" / "top_mosaic_09cm_area1.tif"
    with rasterio.open(raw) as src:
        raw_image, raw_transform, crs = src.read(), src.transform, src.crs
    with rasterio.open(out / "train" / "images" / "area1_20_8_52_40.tif") as patch:
        np.testing.assert_array_equal(patch.read(), raw_image[:, 8:40, 20:52])
        assert patch.crs == crs
        assert patch.transform.c == pytest.approx(raw_transform.c + 20 * 0.09)
        assert patch.transform.f == pytest.approx(raw_transform.f - 8 * 0.09)


def test_potsdam_drops_faulty_tile_and_uses_val_tile(tmp_path):
    meta = prepare("potsdam", DATA / "potsdam" / "raw", tmp_path, PatchRecipe(32, 32, 32))
    assert meta["splits"]["train"]["tiles"] == ["2_11"]
    assert meta["splits"]["val"]["tiles"] == ["2_10"]
    assert meta["splits"]["test"]["tiles"] == ["2_13"]
    assert not list(tmp_path.rglob("7_10*"))
    val_label = DATA / "potsdam" / "raw" / "5_Labels_all_noBoundary" / "top_potsdam_2_10_label_noBoundary.tif"
    mask = png(tmp_path / "val" / "masks" / "2_10_0_0_32_32.png")
    np.testing.assert_array_equal(mask, expected_isprs_mask(val_label)[:32, :32])


def test_loveda_masks_shift_classes_and_ignore_nodata(tmp_path):
    meta = prepare("loveda", DATA / "loveda" / "raw", tmp_path)
    assert meta["splits"]["train"]["patches"] == 3
    assert meta["splits"]["val"]["patches"] == 2
    assert meta["splits"]["test"]["patches"] == 2
    raw = png(DATA / "loveda" / "raw" / "Train" / "Urban" / "masks_png" / "1.png").astype(int)
    mask = png(tmp_path / "train" / "masks" / "1.png").astype(int)
    assert (raw == 0).any()
    for value in range(8):
        expected = 255 if value == 0 else value - 1
        assert (mask[raw == value] == expected).all()
    image = png(tmp_path / "train" / "images" / "1.png")
    np.testing.assert_array_equal(image, png(DATA / "loveda" / "raw" / "Train" / "Urban" / "images_png" / "1.png"))
    assert not (tmp_path / "test" / "masks").exists()


def test_uavid_colour_labels_with_clutter_and_white_ignore(tmp_path):
    meta = prepare("uavid", DATA / "uavid" / "raw", tmp_path, PatchRecipe(32, 32, 32))
    assert meta["splits"]["train"]["tiles"] == ["seq1_000000", "seq2_000100"]
    assert meta["splits"]["test"]["tiles"] == ["seq21_000000"]
    colours = {(128, 0, 0): 0, (128, 64, 128): 1, (0, 128, 0): 2, (128, 128, 0): 3, (64, 0, 128): 4,
               (192, 0, 192): 5, (64, 64, 0): 6, (0, 0, 0): 7}  # fmt: skip
    label = png(DATA / "uavid" / "raw" / "uavid_val" / "seq16" / "Labels" / "000000.png")
    mask = png(tmp_path / "val" / "masks" / "seq16_000000_0_0_32_32.png")
    for y in range(32):
        for x in range(32):
            assert mask[y, x] == colours.get(tuple(int(v) for v in label[y, x]), 255)
    # 64 x 36 frame, training windows shifted inside: rows {0, 4} x cols {0, 32}
    assert len(list((tmp_path / "train" / "images").glob("seq1_000000_*.png"))) == 4


def test_cli_reports_missing_raw_folder(tmp_path, caplog):
    assert main(["loveda", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in caplog.text


def test_cli_prepares_with_patch_options(tmp_path):
    out = tmp_path / "out"
    args = ["vaihingen", "--raw", str(DATA / "vaihingen" / "raw"), "--out", str(out)]
    assert main([*args, "--train-patch-px", "32", "--train-stride-px", "32", "--eval-patch-px", "0"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["test"]["patch_px"] == 0
    assert [p.name for p in (out / "test" / "images").iterdir()] == ["area2_0_0_41_50.tif"]


def test_raw_folder_without_dataset_files_is_an_error(tmp_path):
    (tmp_path / "raw").mkdir()
    assert main(["potsdam", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out")]) == 2


def test_label_of_wrong_size_is_reported(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(DATA / "potsdam" / "raw", raw)
    label = raw / "5_Labels_all" / "top_potsdam_2_11_label.tif"
    with rasterio.open(label) as src:
        profile, data = src.profile, src.read()
    profile.update(height=data.shape[1] - 1)
    with rasterio.open(label, "w", **profile) as dst:
        dst.write(data[:, :-1])
    assert main(["potsdam", "--raw", str(raw), "--out", str(tmp_path / "out")]) == 2

"""Training chips from a raster and label polygons (training.chips / bicorseg:exporttrainingdata's writer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from engine.errors import CanceledError, InvalidInputError, OutputPathError
from training.chip_splits import choose_cut
from training.chips import ChipRequest, main, write_chips
from training.labels import ClassScheme, LabelClass, LabelFeature, PolygonLabels, RasterLabels

from .labelled_raster import NAMES, box, class_map, trace, write_labels, write_raster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scene(tmp_path):
    classes = class_map(96, 96)
    raster = write_raster(tmp_path / "raster.tif", classes)
    return raster, classes


def _labels(classes, window=None, **kwargs) -> PolygonLabels:
    features = tuple(LabelFeature(g, v) for g, v in trace(classes, window))
    return PolygonLabels(features, "EPSG:32640", "labels", "class", **kwargs)


def _read_chips(folder: Path):
    manifest = json.loads((folder / "manifest.json").read_text())
    chips = []
    for entry in manifest["chips"]:
        with rasterio.open(folder / entry["label"]) as src:
            labels = src.read(1)
            transform = src.transform
        with rasterio.open(folder / entry["image"]) as src:
            image = src.read()
            assert src.transform == transform
        chips.append((entry, image, labels))
    return manifest, chips


def test_chips_carry_the_labels_on_the_raster_grid(scene, tmp_path):
    raster, classes = scene
    result = write_chips(ChipRequest(raster, _labels(classes), tile_size_px=32, overlap_px=8), tmp_path / "chips")
    manifest, chips = _read_chips(tmp_path / "chips")
    assert [c["name"] for c in manifest["classes"]] == sorted(NAMES)  # text values sorted, distinct colours
    assert len({c["color"] for c in manifest["classes"]}) == 3
    assert manifest["band_names"] == ["red", "green", "blue"] and manifest["gsd_m"] == pytest.approx(1.0)
    names = [c["name"] for c in manifest["classes"]]
    with rasterio.open(raster) as src:
        for entry, image, labels in chips:
            col, row, w, h = entry["window"]
            assert np.array_equal(image, src.read(window=Window(col, row, w, h)))
            expected = classes[row : row + h, col : col + w]
            labelled = labels != 255
            # every labelled pixel carries the class of the map (by name), as the polygons traced it
            assert np.array_equal(np.asarray(names)[labels[labelled]], np.asarray(NAMES)[expected[labelled]])
    train = [c for c in chips if c[0]["split"] == "train"]
    val = [c for c in chips if c[0]["split"] == "val"]
    assert train and val and result.train_chips == len(train) and result.val_chips == len(val)
    assert sum(result.val_class_px) / (sum(result.val_class_px) + sum(result.train_class_px)) == pytest.approx(
        0.2, abs=0.08
    )


def test_the_automatic_validation_share_never_shares_a_pixel_with_training(scene, tmp_path):
    raster, classes = scene
    write_chips(ChipRequest(raster, _labels(classes), tile_size_px=32, overlap_px=8), tmp_path / "chips")
    manifest, chips = _read_chips(tmp_path / "chips")
    seen = {"train": np.zeros(classes.shape, bool), "val": np.zeros(classes.shape, bool)}
    for entry, _, labels in chips:
        col, row, w, h = entry["window"]
        seen[entry["split"]][row : row + h, col : col + w] |= labels != 255
    assert not (seen["train"] & seen["val"]).any()
    assert manifest["validation"]["mode"] == "cut"
    # the two sides are separated by a gap without labels (straight cut): no training pixel touches a validation one
    cols_train = np.flatnonzero(seen["train"].any(axis=0))
    cols_val = np.flatnonzero(seen["val"].any(axis=0))
    rows_train = np.flatnonzero(seen["train"].any(axis=1))
    rows_val = np.flatnonzero(seen["val"].any(axis=1))
    separated_cols = cols_train.max() < cols_val.min() or cols_val.max() < cols_train.min()
    separated_rows = rows_train.max() < rows_val.min() or rows_val.max() < rows_train.min()
    assert separated_cols or separated_rows


def test_sparse_labels_leave_unlabelled_pixels_without_class_and_labelled_area_makes_them_background(scene, tmp_path):
    raster, _classes = scene
    sparse = PolygonLabels((LabelFeature(box(2, 2, 20, 20), "roofs"), LabelFeature(box(40, 40, 60, 60), "water")),
                           "EPSG:32640", "sparse", "class")  # fmt: skip
    request = ChipRequest(raster, sparse, tile_size_px=32, overlap_px=0, validation_share=0.0)
    write_chips(request, tmp_path / "sparse")
    manifest, chips = _read_chips(tmp_path / "sparse")
    assert [c["name"] for c in manifest["classes"]] == ["roofs", "water"]
    total = sum(int((labels != 255).sum()) for _, _, labels in chips)
    assert total == 18 * 18 + 20 * 20
    area = PolygonLabels((LabelFeature(box(0, 0, 32, 32)),), "EPSG:32640", "area")
    write_chips(ChipRequest(raster, sparse, tile_size_px=32, overlap_px=0, validation_share=0.0, labeled_area=area,
                            background_class="other"), tmp_path / "area")  # fmt: skip
    manifest, chips = _read_chips(tmp_path / "area")
    assert [c["name"] for c in manifest["classes"]] == ["roofs", "water", "other"]
    first = next(labels for entry, _, labels in chips if entry["window"][:2] == [0, 0])
    assert (first == 2).sum() == 32 * 32 - 18 * 18 and (first == 255).sum() == 0


def test_validation_polygons_with_classes_or_as_areas(scene, tmp_path):
    raster, classes = scene
    left = Window(0, 0, 64, 96)
    labels = _labels(classes, left)
    val_labels = _labels(classes, Window(64, 0, 32, 96))
    write_chips(ChipRequest(raster, labels, tile_size_px=32, overlap_px=0, validation=val_labels), tmp_path / "a")
    manifest, chips = _read_chips(tmp_path / "a")
    assert manifest["validation"]["mode"] == "polygons"
    assert all(entry["window"][0] >= 64 for entry, _, _ in chips if entry["split"] == "val")
    area = PolygonLabels((LabelFeature(box(0, 0, 64, 32)),), "EPSG:32640", "val area")
    write_chips(ChipRequest(raster, labels, tile_size_px=32, overlap_px=0, validation=area), tmp_path / "b")
    manifest, chips = _read_chips(tmp_path / "b")
    assert manifest["validation"]["mode"] == "areas"
    for entry, _, lab in chips:
        _col, row, w, h = entry["window"]
        rows = np.arange(row, row + h)[:, None].repeat(w, axis=1)
        if entry["split"] == "val":
            assert (rows[lab != 255] < 32).all()
        else:
            assert (rows[lab != 255] >= 32).all()


def test_labels_in_another_crs_are_reprojected_and_said(scene, tmp_path):
    raster, classes = scene
    gpkg = write_labels(tmp_path / "labels.gpkg", trace(classes))
    import rasterio.warp

    wgs84 = tuple(
        LabelFeature(rasterio.warp.transform_geom("EPSG:32640", "EPSG:4326", g), v) for g, v in trace(classes)
    )
    labels = PolygonLabels(wgs84, "EPSG:4326", "labels_wgs84", "class")
    result = write_chips(ChipRequest(raster, labels, tile_size_px=32, overlap_px=0), tmp_path / "wgs84")
    assert any("EPSG:4326" in n and "reprojected" in n and "EPSG:32640" in n for n in result.notes)
    direct = write_chips(ChipRequest(raster, _labels(classes), tile_size_px=32, overlap_px=0), tmp_path / "utm")
    assert not direct.notes
    # the same pixels up to the polygon edges that moved by rounding
    assert sum(result.train_class_px) == pytest.approx(sum(direct.train_class_px), rel=0.03)
    assert gpkg.is_file()


def test_bad_input_gives_one_clear_message_each(scene, tmp_path):
    raster, classes = scene
    far = PolygonLabels((LabelFeature(box(500, 500, 520, 520), "a"), LabelFeature(box(530, 500, 540, 520), "b")),
                        "EPSG:32640", "far_away", "class")  # fmt: skip
    with pytest.raises(InvalidInputError, match="do not overlap the raster") as error:
        write_chips(ChipRequest(raster, far), tmp_path / "x")
    assert "far_away" in str(error.value) and "CRS" in str(error.value)
    one = PolygonLabels((LabelFeature(box(0, 0, 40, 40), "roofs"), LabelFeature(box(50, 50, 90, 90), "roofs")),
                        "EPSG:32640", "one", "kind")  # fmt: skip
    with pytest.raises(InvalidInputError, match="only one class value") as error:
        write_chips(ChipRequest(raster, one), tmp_path / "x")
    assert "'kind'" in str(error.value) and "LABELED_AREA" in str(error.value)
    area = PolygonLabels((LabelFeature(box(0, 0, 10, 10)),), "EPSG:32640", "far validation")
    labels = _labels(classes, Window(40, 40, 56, 56))
    with pytest.raises(InvalidInputError, match="No labelled pixel in the validation share"):
        write_chips(ChipRequest(raster, labels, validation=area), tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(OutputPathError, match="not empty"):
        write_chips(ChipRequest(raster, _labels(classes)), tmp_path / "full")
    assert not (tmp_path / "x").exists()


def test_cancel_leaves_nothing(scene, tmp_path):
    raster, classes = scene

    class Cancel:
        def set_progress(self, fraction):
            pass

        def is_canceled(self):
            return True

        def log(self, message):
            pass

    with pytest.raises(CanceledError):
        write_chips(ChipRequest(raster, _labels(classes), tile_size_px=32, overlap_px=8), tmp_path / "chips", Cancel())
    assert list(tmp_path.iterdir()) == [raster]


def test_nodata_pixels_carry_no_class(tmp_path):
    classes = class_map(64, 64)
    raster = write_raster(tmp_path / "r.tif", classes, nodata_rows=8)
    write_chips(ChipRequest(raster, _labels(classes), tile_size_px=32, overlap_px=0, validation_share=0),
                tmp_path / "c")  # fmt: skip
    _, chips = _read_chips(tmp_path / "c")
    for entry, _, labels in chips:
        _col, row, _w, _h = entry["window"]
        if row == 0:
            assert (labels[:8] == 255).all() and (labels[8:] != 255).any()


def test_class_raster_labels_with_their_colour_table(scene, tmp_path):
    raster, classes = scene
    label_raster = tmp_path / "classes.tif"
    values = np.where(classes == 0, 10, np.where(classes == 1, 20, 30)).astype(np.uint8)
    values[:, :10] = 255
    with rasterio.open(raster) as src:
        profile = {**src.profile, "count": 1, "nodata": 255}
        profile.pop("photometric", None)
    with rasterio.open(label_raster, "w", **profile) as dst:
        dst.write(values, 1)
        dst.write_colormap(1, {10: (0, 0, 255, 255), 20: (0, 160, 0, 255), 30: (255, 0, 0, 255)})
    write_chips(ChipRequest(raster, RasterLabels(label_raster, source="classes.tif"), tile_size_px=32, overlap_px=8),
                tmp_path / "c")  # fmt: skip
    manifest, chips = _read_chips(tmp_path / "c")
    assert [c["value"] for c in manifest["classes"]] == [10, 20, 30]
    assert [c["color"] for c in manifest["classes"]] == ["#0000ff", "#00a000", "#ff0000"]
    for entry, _, labels in chips:
        col, row, w, h = entry["window"]
        labelled = labels != 255
        assert np.array_equal(labels[labelled], classes[row : row + h, col : col + w][labelled])
        assert not labelled[:, : max(0, 10 - col)].any()


def test_categorised_style_names_colours_and_order_win():
    styles = (LabelClass("w", "Open water", "#0000ff"), LabelClass("t", "Trees", "#00ff00"))
    scheme = ClassScheme.from_values(["t", "x", "w", "t"], styles, background="bg")
    assert scheme.names == ("Open water", "Trees", "x", "bg")
    assert scheme.colors[:2] == ("#0000ff", "#00ff00") and len(set(scheme.colors)) == 4
    assert ClassScheme.from_values([3, 1, 2]).names == ("1", "2", "3")
    assert ClassScheme.from_values([1, 2], background="2").names == ("1", "2")  # an existing class as background


def test_choose_cut_keeps_every_class_on_both_sides():
    coarse = np.full((20, 40), 255, np.uint8)
    coarse[:, :4] = 0  # class 0 only in a thin western strip: any east/west cut leaves it on one side
    coarse[:, 4:] = np.where((np.arange(20) // 2 % 2 == 0)[:, None], 1, 2)  # classes 1, 2 in alternating rows
    axis, position, after, share = choose_cut(coarse, 3, 0.2)
    assert axis == "row" and share == pytest.approx(0.2, abs=0.06)
    held = coarse[position:] if after else coarse[:position]
    assert set(np.unique(held)) == {0, 1, 2}


def test_command_line_writes_the_same_chips_and_fails_in_one_line(scene, tmp_path, capsys):
    raster, classes = scene
    gpkg = write_labels(tmp_path / "labels.gpkg", trace(classes))
    code = main(["--raster", str(raster), "--labels", str(gpkg), "--class-field", "class", "-o", str(tmp_path / "cli"),
                 "--tile-size", "32", "--overlap", "8"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == sorted(NAMES)
    api = write_chips(ChipRequest(raster, _labels(classes), tile_size_px=32, overlap_px=8), tmp_path / "api")
    cli_manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert [c["window"] for c in cli_manifest["chips"]] == [c["window"] for c in api.manifest["chips"]]
    proc = subprocess.run(
        [sys.executable, "-m", "training.chips", "--raster", str(raster), "--labels", str(gpkg), "--class-field",
         "nope", "-o", str(tmp_path / "bad")],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no field 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_chips_need_no_torch():
    code = "import sys; import training.chips, training.labels; assert 'torch' not in sys.modules; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr

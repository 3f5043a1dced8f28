"""Vector output: class polygons with class index, name and area in m², sieve, CRS, nodata, atomic writing.

Expected areas come from the class rasters themselves, counted here (pixels x pixel area for projected rasters,
the closed-form ellipsoidal area of each row's cells for geographic ones); expected region counts from
``scipy.ndimage.label`` (4-connected).
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage

from engine.cli import EXIT_BAD_INPUT, main
from engine.errors import CanceledError, OutputPathError
from engine.inference.pipeline import SegmentationRequest, segment_raster
from engine.model_card import ModelCard
from engine.raster.vectorize import VectorOutput, write_class_polygons
from tests.engine.pipeline_helpers import TINY_CARD, build_tiny_onnx, expected_probs, make_image, write_raster

ogr = pytest.importorskip("osgeo.ogr")
osr = pytest.importorskip("osgeo.osr")

REPO = Path(__file__).resolve().parents[2]
CARD = ModelCard(name="v", architecture="external", class_names=("sea", "land", "rock"),
                 class_colors=("#0000ff", "#00ff00", "#777777"))  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("vector_model") / "tiny.onnx")


def run_main(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, err.getvalue()


def read_polygons(path: Path) -> tuple[list[dict], object]:
    dataset = ogr.Open(str(path))
    assert dataset is not None, path
    layer = dataset.GetLayer(0)
    fields = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
    assert fields == ["class_index", "class_name", "area_m2"]
    rows = [
        {"class_index": f.GetField(0), "class_name": f.GetField(1), "area_m2": f.GetField(2),
         "wkt": f.GetGeometryRef().ExportToWkt(), "type": f.GetGeometryRef().GetGeometryName()}
        for f in layer
    ]  # fmt: skip
    srs = layer.GetSpatialRef()
    return rows, None if srs is None else srs.ExportToWkt()


def area_by_class(rows: list[dict], k: int) -> np.ndarray:
    totals = np.zeros(k)
    for row in rows:
        totals[row["class_index"]] += row["area_m2"]
    return totals


def write_classes(path: Path, classes: np.ndarray, crs: str | None = "EPSG:32640", transform=None) -> Path:
    height, width = classes.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": "uint8", "nodata": 255}
    if crs is not None:
        profile.update(crs=crs, transform=transform or from_origin(500000.0, 2800000.0, 1.0, 1.0))
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(classes.astype(np.uint8), 1)
    return path


def same_crs(wkt_a: str, wkt_b: str) -> bool:
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(wkt_a)
    b.ImportFromWkt(wkt_b)
    return bool(a.IsSame(b))


# --- the command line, end to end -------------------------------------------------------------------------


def test_cli_polygons_carry_class_name_and_areas_summing_to_each_class_area(tmp_path: Path, tiny_model: Path) -> None:
    image = make_image(40, 56, seed=21)
    image[:, :4, :] = 0
    raster = write_raster(tmp_path / "in.tif", image, nodata=0)
    vector = tmp_path / "classes.gpkg"
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "classes.tif"), "--vector", str(vector),
                          "--model", str(tiny_model), "-q"])  # fmt: skip
    assert code == 0, err
    rows, wkt = read_polygons(vector)
    expected = expected_probs(image).argmax(axis=0)
    valid = np.ones(expected.shape, bool)
    valid[:4] = False
    pixel_m2 = 0.5 * 0.5
    counts = np.bincount(expected[valid], minlength=3)
    np.testing.assert_allclose(area_by_class(rows, 3), counts * pixel_m2, rtol=1e-12)
    assert all(row["class_name"] == TINY_CARD.class_names[row["class_index"]] for row in rows)
    assert all(row["type"] == "POLYGON" for row in rows)
    # One polygon per 4-connected region of each class, nodata excluded.
    regions = sum(ndimage.label((expected == k) & valid)[1] for k in range(3))
    assert len(rows) == regions
    with rasterio.open(raster) as src:
        assert same_crs(wkt, src.crs.to_wkt())
        top = src.transform.f - 4 * 0.5
    for row in rows:  # nothing lies in the nodata rows
        envelope = ogr.CreateGeometryFromWkt(row["wkt"]).GetEnvelope()
        assert envelope[3] <= top + 1e-9


def test_cli_min_area_leaves_no_region_smaller_than_it(tmp_path: Path, tiny_model: Path) -> None:
    image = make_image(48, 48, seed=22)
    raster = write_raster(tmp_path / "in.tif", image)
    vector = tmp_path / "v.gpkg"
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--vector", str(vector),
                          "--min-area", "1.0", "--model", str(tiny_model), "-q"])  # fmt: skip
    assert code == 0, err
    rows, _ = read_polygons(vector)
    assert min(row["area_m2"] for row in rows) >= 1.0  # 4 pixels of 0.25 m²
    assert sum(row["area_m2"] for row in rows) == pytest.approx(48 * 48 * 0.25, rel=1e-12)
    expected = expected_probs(image).argmax(axis=0)
    assert len(rows) < sum(ndimage.label(expected == k)[1] for k in range(3))
    with rasterio.open(tmp_path / "c.tif") as classes:  # the class raster itself is not sieved
        np.testing.assert_array_equal(classes.read(1), expected)


@pytest.mark.parametrize("name", ["v.geojson", "v.fgb"])
def test_other_vector_formats_by_extension(tmp_path: Path, tiny_model: Path, name: str) -> None:
    image = make_image(24, 24, seed=23)
    raster = write_raster(tmp_path / "in.tif", image)
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--vector", str(tmp_path / name),
                          "--model", str(tiny_model), "-q"])  # fmt: skip
    assert code == 0, err
    rows, _ = read_polygons(tmp_path / name)
    counts = np.bincount(expected_probs(image).argmax(axis=0).ravel(), minlength=3)
    np.testing.assert_allclose(area_by_class(rows, 3), counts * 0.25, rtol=1e-9)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--vector", "v.shp"], "unsupported extension"),
        (["--min-area", "5"], "give --vector too"),
        (["--vector", "v.gpkg", "--min-area", "-1"], "expected a finite area >= 0"),
    ],
)
def test_cli_rejects_bad_vector_options_before_any_work(tmp_path: Path, tiny_model: Path, capsys, extra, message):
    raster = write_raster(tmp_path / "in.tif", make_image(16, 16))
    args = [a if not a.startswith("v.") else str(tmp_path / a) for a in extra]
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--model", str(tiny_model), *args])
    assert code == EXIT_BAD_INPUT
    assert message in err + capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


# --- the vector step on hand-made class rasters --------------------------------------------------------


def sieve_scene() -> np.ndarray:
    """20 x 20, 1 m pixels: land (1) on the left 12 columns, sea (0) on the right, nodata in the last row.

    Rock (2) islands: 2 px at row 5, columns 11-12, straddling land and sea (land is the larger neighbour);
    1 px at (15, 16) and 3 px at row 2, columns 14-16, both in the sea.
    """
    classes = np.zeros((20, 20), np.uint8)
    classes[:, :12] = 1
    classes[5, 11:13] = 2
    classes[15, 16] = 2
    classes[2, 14:17] = 2
    classes[19, :] = 255
    return classes


def test_without_min_area_every_region_is_a_polygon(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "c.tif", sieve_scene())
    stats = write_class_polygons(raster, tmp_path / "v.gpkg", VectorOutput(tmp_path / "v.gpkg"), CARD, tmp_path, "t")
    rows, _ = read_polygons(tmp_path / "v.gpkg")
    assert stats.feature_count == len(rows) == 5 and stats.sieve_threshold_px == 0
    # Counted by hand from the scene: land 12 x 19 - 1, sea 8 x 19 - 1 - 1 - 3, rock 2 + 1 + 3.
    np.testing.assert_allclose(area_by_class(rows, 3), [147.0, 227.0, 6.0])
    assert sorted(r["area_m2"] for r in rows if r["class_index"] == 2) == [1.0, 2.0, 3.0]


def test_min_area_merges_smaller_islands_into_their_largest_neighbour(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "c.tif", sieve_scene())
    output = VectorOutput(tmp_path / "v.gpkg", min_area_m2=3.0)
    stats = write_class_polygons(raster, tmp_path / "v.gpkg", output, CARD, tmp_path, "t")
    rows, _ = read_polygons(tmp_path / "v.gpkg")
    assert stats.sieve_threshold_px == 3
    # The 2 px island joins land (its larger neighbour), the 1 px one the sea; the 3 px one (= MIN_AREA) stays.
    np.testing.assert_allclose(area_by_class(rows, 3), [148.0, 229.0, 3.0])
    assert len(rows) == 3
    assert sum(r["area_m2"] for r in rows) == 380.0  # the nodata row is never merged into


def test_areas_of_a_geographic_raster_are_ellipsoidal_square_metres(tmp_path: Path) -> None:
    step = 0.001  # degrees, at 60 N: pixels of about 55.8 m x 111.4 m
    classes = np.zeros((30, 20), np.uint8)
    classes[5:25, 3:9] = 1
    classes[0:10, 12:20] = 2
    classes[29, :] = 255
    raster = write_classes(tmp_path / "c.tif", classes, crs="EPSG:4326", transform=from_origin(10.0, 60.0, step, step))
    write_class_polygons(raster, tmp_path / "v.gpkg", VectorOutput(tmp_path / "v.gpkg"), CARD, tmp_path, "t")
    rows, wkt = read_polygons(tmp_path / "v.gpkg")
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    assert same_crs(wkt, wgs84.ExportToWkt())
    # Area of one cell of row r: the ellipsoidal zone between its two parallels over `step` degrees of longitude.
    a, f = 6378137.0, 1 / 298.257223563
    b, e = a * (1 - f), math.sqrt(f * (2 - f))

    def zone(lat_deg: float) -> float:
        s = math.sin(math.radians(lat_deg))
        return b * b / 2 * (s / (1 - e * e * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e))

    cell = np.array([(zone(60.0 - r * step) - zone(60.0 - (r + 1) * step)) * math.radians(step) for r in range(30)])
    expected = [float(((classes == k) * cell[:, None]).sum()) for k in range(3)]
    np.testing.assert_allclose(area_by_class(rows, 3), expected, rtol=1e-7)
    assert 6000.0 < cell[0] < 6400.0  # about 55.8 m x 111.4 m: metres, not square degrees


def test_a_raster_without_crs_gets_polygons_without_area(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "c.tif", sieve_scene(), crs=None)
    stats = write_class_polygons(raster, tmp_path / "v.gpkg", VectorOutput(tmp_path / "v.gpkg"), CARD, tmp_path, "t")
    rows, _ = read_polygons(tmp_path / "v.gpkg")
    assert stats.area_method == "none" and len(rows) == 5
    assert all(row["area_m2"] is None for row in rows)


# --- atomic with the other outputs ----------------------------------------------------------------------


class CancelInVectorStep:
    """Cancels once the run is past its tiles (80 % of the bar, where the vector step starts)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def set_progress(self, fraction: float) -> None:
        self.values.append(fraction)

    def is_canceled(self) -> bool:
        return bool(self.values) and self.values[-1] >= 0.8

    def log(self, message: str) -> None:
        pass


def test_cancel_during_the_vector_step_leaves_no_output_at_all(tmp_path: Path, tiny_model: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(40, 40, seed=24))
    request = SegmentationRequest(input_path=raster, output_path=tmp_path / "c.tif", heatmaps_path=tmp_path / "h.tif",
                                  model_path=tiny_model, vector_path=tmp_path / "v.gpkg", min_area_m2=1.0)  # fmt: skip
    progress = CancelInVectorStep()
    with pytest.raises(CanceledError):
        segment_raster(request, progress=progress)
    assert max(progress.values) >= 0.8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_a_failing_vector_step_leaves_no_raster_either(tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    import engine.raster.writer

    def broken(*args, **kwargs):
        raise OutputPathError("disk full while polygonizing")

    monkeypatch.setattr(engine.raster.writer, "write_class_polygons", broken)
    raster = write_raster(tmp_path / "in.tif", make_image(16, 16, seed=25))
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--vector", str(tmp_path / "v.gpkg"),
                          "--model", str(tiny_model), "-q"])  # fmt: skip
    assert code == EXIT_BAD_INPUT and "disk full while polygonizing" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_osgeo_and_rasterio_work_in_one_process_in_either_import_order(tmp_path: Path) -> None:
    script = """
import sys
from pathlib import Path
import numpy as np
first = sys.argv[1]
if first == "osgeo":
    from osgeo import gdal, ogr
    import rasterio
else:
    import rasterio
    from osgeo import gdal, ogr
from rasterio.transform import from_origin
from engine.model_card import ModelCard
from engine.raster.vectorize import VectorOutput, write_class_polygons
card = ModelCard(name="v", architecture="external", class_names=("a", "b"), class_colors=("#000000", "#ffffff"))
folder = Path(sys.argv[2])
for i in range(3):
    classes = np.random.default_rng(i).integers(0, 2, (200, 300)).astype("uint8")
    path = folder / f"c{i}.tif"
    with rasterio.open(path, "w", driver="GTiff", height=200, width=300, count=1, dtype="uint8", nodata=255,
                       crs="EPSG:32640", transform=from_origin(500000, 2800000, 2, 2)) as dst:
        dst.write(classes, 1)
    out = folder / f"v{i}.gpkg"
    write_class_polygons(path, out, VectorOutput(out, 8.0), card, folder, str(i))
    with rasterio.open(path) as src:
        assert (src.read(1) == classes).all()
    dataset = ogr.Open(str(out))  # keep the dataset referenced while its layer is used (GDAL < 3.8 bindings)
    assert dataset.GetLayer(0).GetFeatureCount() > 0
    del dataset
print("ok", rasterio.__gdal_version__, gdal.__version__)
"""
    for first in ("osgeo", "rasterio"):
        folder = tmp_path / first
        folder.mkdir()
        done = subprocess.run([sys.executable, "-c", script, first, str(folder)], capture_output=True, text=True,
                              cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("ok")

"""Distributed runs on a real Dask LocalCluster (2 worker processes, loopback only) against the single-process run."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from distributed import Client, LocalCluster

import engine.distributed.worker
from engine.cli import EXIT_BAD_INPUT, main
from engine.distributed import ClusterOptions, segment_distributed
from engine.distributed.worker import UPLOAD_FOLDER, session_loads
from engine.errors import InvalidRasterError
from engine.inference.pipeline import SegmentationRequest, segment_raster
from engine.inference.tiling import TilingSpec, axis_offsets
from engine.raster.heatmaps import HEATMAP_NODATA
from tests.engine.pipeline_helpers import TINY_CARD, build_conv_onnx, build_tiny_onnx, make_image, write_raster

#: Tile 32, overlap 14 (stride 18): the super-tile borders at 256 and 512 lie inside two tiles' overlap.
SPEC = TilingSpec(32, 14)
SUPER_TILE_PX = 256


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("dask_model") / "tiny.onnx")


def start_cluster() -> tuple[LocalCluster, Client]:
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR,
        host="127.0.0.1",
    )  # fmt: skip
    return cluster, Client(cluster, set_as_default=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LocalCluster, Client]]:
    cluster, client = start_cluster()
    yield cluster, client
    client.close()
    cluster.close()


def border_in_blend_region(position: int, length: int) -> bool:
    straddling = [o for o in axis_offsets(length, SPEC) if o < position < o + SPEC.tile_size_px]
    return len(straddling) >= 2


def write_input(folder: Path, height: int = 600, width: int = 700) -> Path:
    image = make_image(height, width, seed=5)
    image[:, :120, :300] = 0  # nodata in every band: whole tiles there have no valid pixel
    return write_raster(folder / "in.tif", image, nodata=0)


def request(folder: Path, source: Path, model: Path, name: str, **changes: Any) -> SegmentationRequest:
    fields: dict[str, Any] = {
        "input_path": source, "output_path": folder / f"{name}.tif", "heatmaps_path": folder / f"{name}_heat.tif",
        "model_path": model, "tile_size_px": SPEC.tile_size_px, "overlap_px": SPEC.overlap_px, "batch_size": 4,
        "num_threads": 1,
    }  # fmt: skip
    fields.update(changes)
    return SegmentationRequest(**fields)


def read(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(path) as ds:
        meta = {
            "shape": ds.shape, "count": ds.count, "dtype": ds.dtypes, "nodata": ds.nodata, "crs": ds.crs,
            "transform": ds.transform, "descriptions": ds.descriptions, "scales": ds.scales,
            "block": ds.block_shapes, "tags": {k: v for k, v in ds.tags().items() if k not in ("distributed", "super_tile_px")},
            "colormap": ds.colormap(1) if ds.count == 1 else None,
        }  # fmt: skip
        return ds.read(), meta


class RecordingProgress:
    def __init__(self) -> None:
        self.fractions: list[float] = []

    def set_progress(self, fraction: float) -> None:
        self.fractions.append(fraction)

    def is_canceled(self) -> bool:
        return False

    def log(self, message: str) -> None:
        pass


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_two_workers_give_the_single_process_result(
    tmp_path: Path, tiny_onnx: Path, cluster: tuple[LocalCluster, Client]
) -> None:
    _, client = cluster
    source = write_input(tmp_path)
    assert border_in_blend_region(256, 600) and border_in_blend_region(512, 700)  # borders cross blend regions
    loads_before = client.run(session_loads)
    single = segment_raster(request(tmp_path, source, tiny_onnx, "single"))
    progress = RecordingProgress()
    run = segment_distributed(
        request(tmp_path, source, tiny_onnx, "dask"), ClusterOptions(super_tile_px=256),
        progress=progress, client=client,
    )  # fmt: skip
    assert progress.fractions == sorted(progress.fractions) and progress.fractions[-1] == 1.0
    assert any(0 < f < 0.9 for f in progress.fractions)  # aggregated from the workers while they ran

    classes_1, meta_1 = read(tmp_path / "single.tif")
    classes_2, meta_2 = read(tmp_path / "dask.tif")
    np.testing.assert_array_equal(classes_2, classes_1)
    assert meta_2 == meta_1  # nodata, colour table, grid, blocks, provenance tags
    assert (tmp_path / "dask.tif.aux.xml").read_text() == (tmp_path / "single.tif.aux.xml").read_text()  # categories
    heat_1, hmeta_1 = read(tmp_path / "single_heat.tif")
    heat_2, hmeta_2 = read(tmp_path / "dask_heat.tif")
    assert hmeta_2 == hmeta_1
    np.testing.assert_array_equal(heat_2 == HEATMAP_NODATA, heat_1 == HEATMAP_NODATA)
    assert np.abs(heat_2.astype(np.int32) - heat_1.astype(np.int32)).max() <= 1  # within one quantisation step
    assert run.result.class_pixel_counts == single.class_pixel_counts

    assert run.super_tiles == 9 and len(run.parts) == 9
    tiles = sum(p.tiles for p in run.parts)
    assert run.tiles_computed < tiles  # the all-nodata tiles never reached the model...
    assert tiles > single.tile_count  # ...and the tiles straddling the borders were run by both neighbours
    assert {w.worker for w in run.workers} == set(client.scheduler_info()["workers"])  # both workers took tasks
    assert sum(w.tasks for w in run.workers) == 9
    loads_after = client.run(session_loads)
    assert all(loads_after[w] - loads_before[w] <= 1 for w in loads_after)  # one session per worker for all tasks
    assert leftovers(tmp_path) == []  # no parts folder, no temp files


def test_the_anchored_grid_and_uint8_heatmaps_give_the_single_process_result(
    tmp_path: Path, cluster: tuple[LocalCluster, Client]
) -> None:
    # Every worker places the tile grid as a single-process run does (request_margins), anchored included, and the
    # parts keep the requested heatmap encoding through the assembly. A conv net, whose answers at a tile's edge
    # depend on where the tile falls: a pointwise model would give the same result on any grid.
    _, client = cluster
    source = write_input(tmp_path)
    model = build_conv_onnx(tmp_path / "conv.onnx")
    options = {"tile_grid": "anchored", "heatmap_dtype": "uint8"}
    segment_raster(request(tmp_path, source, model, "single", **options))
    segment_distributed(request(tmp_path, source, model, "dask", **options), ClusterOptions(super_tile_px=256),
                        progress=RecordingProgress(), client=client)  # fmt: skip
    classes_1, meta_1 = read(tmp_path / "single.tif")
    classes_2, meta_2 = read(tmp_path / "dask.tif")
    np.testing.assert_array_equal(classes_2, classes_1)
    assert meta_2 == meta_1 and meta_1["tags"]["tile_grid"] == "anchored"
    heat_1, hmeta_1 = read(tmp_path / "single_heat.tif")
    heat_2, hmeta_2 = read(tmp_path / "dask_heat.tif")
    assert hmeta_2 == hmeta_1 and hmeta_1["dtype"] == ("uint8",) * 3 and hmeta_1["nodata"] == 255
    assert np.abs(heat_2.astype(np.int32) - heat_1.astype(np.int32)).max() <= 1


def test_cli_on_an_existing_scheduler_uploads_the_model_once(
    tmp_path: Path, tiny_onnx: Path, cluster: tuple[LocalCluster, Client]
) -> None:
    cluster_, client = cluster
    source = write_input(tmp_path, 300, 520)
    model = tmp_path / "model" / "uploaded.onnx"
    model.parent.mkdir()
    # Other bytes than the other tests' model: the workers' cache (keyed by SHA-256) cannot already hold it.
    build_tiny_onnx(model, dataclasses.replace(TINY_CARD, name="uploaded tiny model"))
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["segment", str(source), "-o", str(tmp_path / "c.tif"), "--model", str(model), "--tile-size", "32",
         "--overlap", "14", "--threads", "1", "--scheduler", cluster_.scheduler_address, "--super-tile", "256",
         "--upload-model", "--json", "-q"],
        stdout=out, stderr=err,
    )  # fmt: skip
    assert code == 0, err.getvalue()
    summary = json.loads(out.getvalue())
    dask = summary["distributed"]
    assert dask["super_tiles"] == 6
    assert sum(w["tasks"] for w in dask["workers"]) == 6
    assert sum(w["tiles_run"] for w in dask["workers"]) == dask["tiles_computed"]
    assert sum(w["valid_pixels"] for w in dask["workers"]) == summary["valid_pixels"]

    def loaded_paths() -> list[str]:
        return [str(m.path) for m in engine.distributed.worker._MODELS.values()]

    sha256 = summary["model_sha256"]
    paths = [p for ps in client.run(loaded_paths).values() for p in ps if "uploaded" in p or sha256 in p]
    assert paths and all(UPLOAD_FOLDER in p and sha256 in p for p in paths)  # the uploaded copy ran, not the path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "c.tif.aux.xml", "in.tif", "model"]


def test_bad_data_on_a_worker_fails_the_run_with_the_engines_one_line_error(
    tmp_path: Path, tiny_onnx: Path, cluster: tuple[LocalCluster, Client]
) -> None:
    cluster_, _ = cluster
    image = make_image(768, 768, seed=2)
    source = tmp_path / "corrupt.tif"
    with rasterio.open(
        source, "w", driver="GTiff", width=768, height=768, count=3, dtype="uint8", tiled=True, blockxsize=256,
        blockysize=256, compress="deflate", crs="EPSG:32640", transform=rasterio.transform.from_origin(5e5, 28e5, 1, 1),
    ) as ds:  # fmt: skip
        ds.write(image)
    size = source.stat().st_size
    with source.open("r+b") as f:  # the header stays readable; the last blocks' deflate streams are broken
        f.seek(size // 2)
        f.write(b"\0" * (size - size // 2 - 4096))
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["segment", str(source), "-o", str(tmp_path / "c.tif"), "--heatmaps", str(tmp_path / "h.tif"),
         "--model", str(tiny_onnx), "--scheduler", cluster_.scheduler_address, "--super-tile", "256", "-q"],
        stdout=out, stderr=err,
    )  # fmt: skip
    assert code == EXIT_BAD_INPUT, err.getvalue()
    assert "Traceback" not in err.getvalue()
    last = err.getvalue().splitlines()[-1]  # after the run's one information line
    assert last.startswith("error: Reading") and "truncated or corrupt" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.tif"]  # no output, no parts


class KillAWorkerOnce:
    """A progress reporter that kills (SIGKILL, by pid) a worker holding a task, once the run is under way."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.killed: tuple[str, int, list[str]] | None = None

    def set_progress(self, fraction: float) -> None:
        if self.killed is not None or fraction < 0.1:
            return
        pids = self.client.run(os.getpid)
        for address, keys in self.client.processing().items():
            if keys and address in pids:
                self.killed = (address, pids[address], [str(k) for k in keys])
                os.kill(pids[address], signal.SIGKILL)
                return

    def is_canceled(self) -> bool:
        return False

    def log(self, message: str) -> None:
        pass


def test_a_worker_killed_mid_run_changes_nothing(tmp_path: Path, tiny_onnx: Path) -> None:
    cluster, client = start_cluster()
    try:
        source = write_input(tmp_path, 1024, 1024)
        options = ClusterOptions(super_tile_px=SUPER_TILE_PX)
        calm = segment_distributed(request(tmp_path, source, tiny_onnx, "calm"), options, client=client)
        killer = KillAWorkerOnce(client)
        hit = segment_distributed(request(tmp_path, source, tiny_onnx, "hit"), options, progress=killer, client=client)
    finally:
        client.close()
        cluster.close()
    assert killer.killed is not None, "the run ended before a worker could be killed"
    _, victim_pid, victim_keys = killer.killed
    rerun = [int(key.rsplit("-", 1)[1]) for key in victim_keys]
    assert all(hit.parts[i].pid != victim_pid for i in rerun)  # its tasks were run again elsewhere
    for name in ("", "_heat"):
        np.testing.assert_array_equal(read(tmp_path / f"hit{name}.tif")[0], read(tmp_path / f"calm{name}.tif")[0])
    assert hit.result.class_pixel_counts == calm.result.class_pixel_counts
    assert leftovers(tmp_path) == []  # the dead worker's temp part went with the parts folder


def test_a_raster_without_valid_pixels_fails_and_leaves_nothing(
    tmp_path: Path, tiny_onnx: Path, cluster: tuple[LocalCluster, Client]
) -> None:
    _, client = cluster
    source = write_raster(tmp_path / "in.tif", np.zeros((3, 300, 300), np.uint8), nodata=0)
    with pytest.raises(InvalidRasterError, match="no valid pixels"):
        segment_distributed(
            request(tmp_path, source, tiny_onnx, "c"), ClusterOptions(super_tile_px=256),
            client=client,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_a_scheduler_file_is_accepted_and_an_unreachable_scheduler_is_one_line(
    tmp_path: Path, tiny_onnx: Path, cluster: tuple[LocalCluster, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_, _ = cluster
    source = write_raster(tmp_path / "in.tif", make_image(64, 300, seed=3))
    scheduler_file = tmp_path / "scheduler.json"  # what `dask scheduler --scheduler-file` writes
    scheduler_file.write_text(json.dumps({"type": "Scheduler", "address": cluster_.scheduler_address}))
    common = ["segment", str(source), "--model", str(tiny_onnx), "--super-tile", "256", "-q"]
    err = io.StringIO()
    assert main([*common, "-o", str(tmp_path / "c.tif"), "--scheduler", str(scheduler_file)], stderr=err) == 0, (
        err.getvalue()
    )
    assert (tmp_path / "c.tif").is_file()

    import engine.distributed.runner

    monkeypatch.setattr(engine.distributed.runner, "_CONNECT_TIMEOUT_S", 2)
    err = io.StringIO()
    code = main([*common, "-o", str(tmp_path / "d.tif"), "--scheduler", "tcp://127.0.0.1:9"], stderr=err)
    assert code == EXIT_BAD_INPUT
    assert err.getvalue().startswith("error: Cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'")
    assert err.getvalue().count("\n") == 1 and not (tmp_path / "d.tif").exists()

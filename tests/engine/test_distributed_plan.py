"""Super-tile plans, the worker's model cache outside Dask, and the engine importing without Dask."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.distributed.plan import plan_super_tiles, redundant_tile_share
from engine.distributed.worker import ModelRef, worker_model
from engine.errors import InvalidInputError, ModelLoadError
from engine.inference.tiling import TilingSpec, iter_tile_windows
from tests.engine.pipeline_helpers import build_tiny_onnx

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_plan_is_block_aligned_and_partitions_the_grid() -> None:
    plan = plan_super_tiles(1000, 600, 512)
    assert [(t.row_off_px, t.col_off_px, t.height_px, t.width_px) for t in plan] == [
        (0, 0, 512, 512), (0, 512, 512, 88), (512, 0, 488, 512), (512, 512, 488, 88),
    ]  # fmt: skip
    assert [t.index for t in plan] == [0, 1, 2, 3]
    assert all(t.row_off_px % 256 == 0 and t.col_off_px % 256 == 0 for t in plan)
    assert sum(t.height_px * t.width_px for t in plan) == 1000 * 600


@pytest.mark.parametrize(("size", "fix"), [(300, "use 256 px"), (1000, "use 1024 px"), (100, "at least 256")])
def test_super_tile_size_must_be_a_multiple_of_the_block(size: int, fix: str) -> None:
    with pytest.raises(InvalidInputError, match=fix):
        plan_super_tiles(1000, 1000, size)


def test_redundant_share_counts_tiles_straddling_borders() -> None:
    spec = TilingSpec(64, 16)
    plan = plan_super_tiles(700, 900, 256)
    grid = list(iter_tile_windows(700, 900, spec))
    # Brute force: a tile is computed once per super-tile it overlaps.
    runs = sum(
        1
        for w in grid
        for t in plan
        if w.row_off < t.row_off_px + t.height_px and w.row_off + 64 > t.row_off_px
        and w.col_off < t.col_off_px + t.width_px and w.col_off + 64 > t.col_off_px
    )  # fmt: skip
    assert redundant_tile_share(700, 900, spec, plan) == pytest.approx((runs - len(grid)) / len(grid))
    assert redundant_tile_share(700, 900, spec, plan_super_tiles(700, 900, 1024)) == 0.0


def test_worker_refuses_a_model_file_that_differs_from_the_clients(tmp_path: Path) -> None:
    path = build_tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ModelLoadError, match="differs from the client's"):
        worker_model(ModelRef(path=str(path), sha256="0" * 64))
    with pytest.raises(ModelLoadError, match=r"not there on worker.*--upload-model"):
        worker_model(ModelRef(path=str(tmp_path / "missing.onnx"), sha256="0" * 64))


def test_engine_and_the_task_side_import_without_dask() -> None:
    code = (
        "import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
        "import engine, engine.cli, engine.distributed, engine.distributed.worker, engine.distributed.plan\n"
        "from engine.errors import BackendUnavailableError\n"
        "from engine.distributed import ClusterOptions, segment_distributed\n"
        "from engine.distributed.runner import connect\n"
        "try:\n"
        "    with connect(ClusterOptions(workers=1)): pass\n"
        "except BackendUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'bicorseg-qgis[distributed]'" in done.stdout


def test_a_worker_with_another_engine_version_refuses_the_task(tmp_path: Path) -> None:
    from engine.distributed.worker import SuperTileJob, run_super_tile
    from engine.errors import DistributedRunError
    from engine.inference.request import SegmentationRequest

    job = SuperTileJob(
        index=0, window=(0, 0, 256, 256), request=SegmentationRequest(tmp_path / "in.tif", tmp_path / "c.tif"),
        model=ModelRef(path="m.onnx", sha256="0" * 64), spec=TilingSpec(32, 8), batch_size=1,
        parts_dir=str(tmp_path), run_id="r", engine_version="0.0.0-other",
    )  # fmt: skip
    with pytest.raises(DistributedRunError, match="install the same version"):
        run_super_tile(job)

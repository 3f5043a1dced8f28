"""`python -m engine segment --workers N`: a local Dask cluster from the command line, its summary, and stopping it."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import rasterio

from engine.cli import EXIT_BAD_INPUT, main
from tests.engine.pipeline_helpers import build_tiny_onnx, make_image, write_raster

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("dask_cli_model") / "tiny.onnx")


def test_workers_flag_runs_a_local_cluster_and_reports_each_worker(tmp_path: Path, tiny_onnx: Path) -> None:
    source = write_raster(tmp_path / "in.tif", make_image(300, 600, seed=4))
    common = ["--model", str(tiny_onnx), "--tile-size", "32", "--overlap", "8", "--threads", "1", "-q"]
    assert main(["segment", str(source), "-o", str(tmp_path / "one.tif"), *common], stderr=io.StringIO()) == 0
    out, err = io.StringIO(), io.StringIO()
    argv = ["segment", str(source), "-o", str(tmp_path / "two.tif"), "--cog", "--workers", "2", "--super-tile", "256"]
    code = main([*argv, *common, "--json"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    summary = json.loads(out.getvalue())
    workers = summary["distributed"]["workers"]
    assert len(workers) == 2 and sum(w["tasks"] for w in workers) == 6  # 2 x 3 super-tiles over 2 processes
    assert all(w["worker"].startswith("tcp://127.0.0.1:") for w in workers)
    with rasterio.open(tmp_path / "one.tif") as one, rasterio.open(tmp_path / "two.tif") as two:
        np.testing.assert_array_equal(two.read(), one.read())
        assert two.profile["blockxsize"] == 256 and two.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not allowed with argument"),
        (["--super-tile", "512"], "--super-tile and --upload-model need --workers"),
        (["--workers", "2", "--super-tile", "300"], "use 256 px"),
        (["--scheduler", "no-such-file.json"], "neither a scheduler address"),
    ],
)
def test_bad_cluster_options_exit_2_with_one_line(
    tmp_path: Path, tiny_onnx: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_raster(tmp_path / "in.tif", make_image(40, 40, seed=1))
    err = io.StringIO()
    code = main(["segment", str(source), "-o", str(tmp_path / "c.tif"), "--model", str(tiny_onnx), "-q", *argv],
                stdout=io.StringIO(), stderr=err)  # fmt: skip
    text = err.getvalue() + capsys.readouterr().err  # argparse's own errors go to sys.stderr
    assert code == EXIT_BAD_INPUT
    assert message in text and "Traceback" not in text and text.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["sigterm", "sigint", "ctrl-c-to-the-process-group"],
)
def test_a_signal_cancels_the_cluster_and_leaves_no_output_and_no_parts(
    tmp_path: Path, tiny_onnx: Path, signum: int, to_group: bool
) -> None:
    source = write_raster(tmp_path / "in.tif", make_image(1536, 1536, seed=8))
    out = tmp_path / "c.tif"
    argv = [sys.executable, "-m", "engine", "segment", str(source), "-o", str(out), "--heatmaps", str(tmp_path / "h.tif"),
            "--model", str(tiny_onnx), "--tile-size", "32", "--overlap", "8", "--batch-size", "1", "--tta", "d4",
            "--workers", "2", "--super-tile", "256", "-q"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        argv, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT, start_new_session=to_group
    )
    deadline = time.monotonic() + 120
    parts: list[Path] = []
    while not parts and time.monotonic() < deadline and process.poll() is None:
        parts = list(tmp_path.glob(".c.*.parts"))
        time.sleep(0.05)
    assert parts, "the run never created its parts folder"
    while not any(parts[0].glob("*.tif")) and time.monotonic() < deadline:  # workers are writing parts
        time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) >= 2  # the local cluster's worker processes
    if to_group:  # a terminal's Ctrl-C reaches the workers too: they must leave it to the client, quietly
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + int(signum), stderr  # 130 for Ctrl-C, 143 for SIGTERM, as without Dask
    assert "Traceback" not in stderr
    assert "interrupted" in stderr.splitlines()[-1]  # SIGTERM is handled like Ctrl-C by the command line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]  # no output, no parts, no temp files
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []  # the cluster went down with the run


def test_bad_data_with_a_local_cluster_is_one_line_without_a_worker_traceback(tmp_path: Path, tiny_onnx: Path) -> None:
    source = tmp_path / "corrupt.tif"
    with rasterio.open(
        source, "w", driver="GTiff", width=768, height=768, count=3, dtype="uint8", tiled=True, blockxsize=256,
        blockysize=256, compress="deflate", crs="EPSG:32640", transform=rasterio.transform.from_origin(5e5, 28e5, 1, 1),
    ) as ds:  # fmt: skip
        ds.write(make_image(768, 768, seed=2))
    size = source.stat().st_size
    with source.open("r+b") as f:  # readable header, broken blocks further down
        f.seek(size // 2)
        f.write(b"\0" * (size - size // 2 - 4096))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "engine", "segment", str(source), "-o", str(tmp_path / "c.tif"), "--model",
            str(tiny_onnx), "--workers", "2", "--super-tile", "256", "-q"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120, check=False)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert "Traceback" not in done.stderr and "Compute Failed" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: Reading")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.tif"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [(["--value-scaling", "minmax"], "--value-scaling minmax"), (["--vector", "v.gpkg"], "--vector")],
)
def test_options_a_distributed_run_cannot_honour_are_refused_before_any_task(
    tmp_path: Path, tiny_onnx: Path, extra: list[str], named: str
) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(64, 64))
    err = io.StringIO()
    argv = ["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--model", str(tiny_onnx), "--workers", "2",
            "-q", *[str(tmp_path / e) if e.endswith(".gpkg") else e for e in extra]]  # fmt: skip
    code = main(argv, stdout=io.StringIO(), stderr=err)
    assert code == EXIT_BAD_INPUT, err.getvalue()
    last = err.getvalue().strip().splitlines()[-1]
    assert "distributed run" in last and named in last, last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]

"""Real faults through the command line: writes that fail, signals, leftovers of killed runs, inputs that change.

Every case ends the same way: exit code 2 (or 128 + the signal), one line on stderr naming the output and the
cause, never a traceback, and nothing at either output path. Full disks are produced three ways: injected (a
folder that reports too little free space, a file that loses its blocks, fsync or sidecar writes that fail), a
real operating-system limit (RLIMIT_FSIZE in a subprocess: writes past it fail with EFBIG) and, where this process
may mount one (root, as in CI), a real tiny tmpfs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

import engine.inference.pipeline
from engine.cli import EXIT_BAD_INPUT, main
from tests.engine.pipeline_helpers import SoftmaxBackend, build_tiny_onnx, expected_probs, make_image, write_raster

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("faults_model") / "tiny.onnx")


def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    code = main(argv, stdout=io.StringIO(), stderr=err)
    return code, err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """Lines that are not the run's information lines (its resolution, which backend runs the model) or progress."""
    info = ("runs with", "Resolution of ", "%|")
    return [line for line in stderr.splitlines() if line.strip() and not any(text in line for text in info)]


def left_in(folder: Path, *inputs: Path) -> list[str]:
    """Everything in ``folder`` (hidden temporaries too) except the inputs."""
    return sorted(p.name for p in folder.iterdir() if p not in inputs)


def segment_argv(raster: Path, out: Path, heat: Path | None, model: Path, *extra: str) -> list[str]:
    return ["segment", str(raster), "-o", str(out), *(["--heatmaps", str(heat)] if heat else []), "--model",
            str(model), "-q", *extra]  # fmt: skip


def assert_one_line_failure(code: int, stderr: str, *fragments: str) -> None:
    assert code == EXIT_BAD_INPUT, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]
    # Neither inner library texts nor the names of the hidden temporaries reach the user.
    assert "see previous exception" not in lines[0].lower() and ".tmp.tif" not in lines[0]
    assert "Traceback" not in stderr


# --- writes that fail ---------------------------------------------------------------------------------------


def test_a_folder_too_full_for_a_block_row_fails_in_one_line_and_leaves_nothing(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(300, 90, seed=1))
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    from engine.raster import write_checks

    monkeypatch.setattr(write_checks, "free_bytes", lambda folder: 10_000)  # less than one block row
    code, stderr = run_main(segment_argv(raster, out, heat, tiny_model))
    assert_one_line_failure(code, stderr, "no space left on the device of", str(tmp_path), "0.0 MB free")
    assert left_in(tmp_path, raster) == []


def test_blocks_that_never_reached_the_disk_are_found_after_close(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a full disk did with multi-threaded compression: close() returned, blocks point past the file's end."""
    raster = write_raster(tmp_path / "in.tif", make_image(300, 300, seed=2))
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    from rasterio.io import DatasetWriter

    real_close = DatasetWriter.close

    def close_losing_the_end(self: DatasetWriter) -> None:
        real_close(self)
        path = Path(self.name)
        if path.name.startswith(".h.") and path.exists():  # the heatmaps' temporary: its last blocks never made it
            with path.open("r+b") as handle:
                handle.truncate(path.stat().st_size // 2)

    monkeypatch.setattr(DatasetWriter, "close", close_losing_the_end)
    code, stderr = run_main(segment_argv(raster, out, heat, tiny_model))
    assert_one_line_failure(code, stderr, "h.tif", "nothing was written")
    assert left_in(tmp_path, raster) == []


def test_a_delayed_write_error_reported_by_fsync_fails_the_run(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(40, 40, seed=3))
    out = tmp_path / "c.tif"

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    code, stderr = run_main(segment_argv(raster, out, None, tiny_model))
    assert_one_line_failure(code, stderr, "c.tif", os.strerror(errno.EIO))
    assert left_in(tmp_path, raster) == []


def test_a_sidecar_that_cannot_be_written_fails_the_run(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full disk used to surface only here, as a 75-line traceback (the class names' .aux.xml)."""
    raster = write_raster(tmp_path / "in.tif", make_image(40, 40, seed=4))
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    import xml.etree.ElementTree as ET

    def no_space(self: ET.ElementTree, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ET.ElementTree, "write", no_space)
    code, stderr = run_main(segment_argv(raster, out, heat, tiny_model))
    assert_one_line_failure(code, stderr, "no space left on the device of", str(tmp_path))
    assert left_in(tmp_path, raster) == []


def test_a_failed_cog_copy_fails_the_run_with_gdal_s_own_reason(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(40, 40, seed=5))
    out = tmp_path / "c.tif"
    import rasterio.shutil

    def failing_copy(*args: object, **kwargs: object) -> None:
        try:
            raise rasterio.errors.RasterioIOError("TIFFAppendToStrip:Write error at scanline 256")
        except rasterio.errors.RasterioIOError as inner:
            raise rasterio.errors.RasterioIOError("Write failed. See previous exception for details.") from inner

    monkeypatch.setattr(rasterio.shutil, "copy", failing_copy)
    code, stderr = run_main(segment_argv(raster, out, None, tiny_model, "--cog"))
    assert_one_line_failure(code, stderr, "c.tif", "TIFFAppendToStrip")
    assert left_in(tmp_path, raster) == []


FILE_SIZE_LIMITED_RUN = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing us
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_real_write_failure_from_the_operating_system_exits_2_and_leaves_nothing(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Writes past RLIMIT_FSIZE fail inside GDAL (EFBIG), as on a full disk: the run must notice, not exit 0."""
    raster = write_raster(tmp_path / "in.tif", make_image(600, 600, seed=6))
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMITED_RUN, str(300_000), *segment_argv(raster, out, heat, tiny_model)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    # GDAL's C library may print its own lines (libtiff's "_tiffWriteProc: File too large."); ours is one line.
    assert len(ours) == 1 and "h.tif" in ours[0], done.stderr
    assert ".tmp.tif" not in ours[0] and "Traceback" not in done.stderr
    assert left_in(tmp_path, raster) == []


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          check=False)  # fmt: skip
    return done.returncode == 0


def test_a_real_full_disk_exits_2_with_one_line_and_leaves_nothing(tmp_path: Path, tiny_model: Path) -> None:
    """A real 400 kB file system: the class raster fits, the heatmaps do not (today's corrupt file / traceback)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "400k"):
        pytest.skip("mounting a tmpfs needs root on Linux (CI runs as root; the injected cases above always run)")
    try:
        raster = write_raster(tmp_path / "in.tif", make_image(600, 600, seed=1))
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "engine"]
        run = {"capture_output": True, "text": True, "env": env, "cwd": REPO_ROOT, "timeout": 120}
        fits = subprocess.run([*command, *segment_argv(raster, disk / "c.tif", None, tiny_model)], check=False, **run)
        assert fits.returncode == 0, fits.stderr  # the class raster alone fits: the check is not too eager
        (disk / "c.tif").unlink()
        (disk / "c.tif.aux.xml").unlink()
        both = subprocess.run(
            [*command, *segment_argv(raster, disk / "c.tif", disk / "h.tif", tiny_model)], check=False, **run
        )
        assert_one_line_failure(both.returncode, both.stderr, "no space left on the device of", str(disk))
        assert sorted(p.name for p in disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --- signals and leftovers ---------------------------------------------------------------------------------

SLOW_RUN = """
import sys, time
import numpy as np
import engine.inference.pipeline

class SlowBackend:
    name, device, device_reason = "fake", "cpu", "test"

    def predict(self, batch):
        sys.stderr.write("PREDICTING\\n")
        sys.stderr.flush()
        time.sleep(0.5)
        return np.full((batch.shape[0], 3, *batch.shape[2:]), 1 / 3, np.float32)

engine.inference.pipeline.load_backend = lambda *args, **kwargs: SlowBackend()
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_end_the_run_like_ctrl_c(tmp_path: Path, tiny_model: Path, signum: int) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(64, 64, seed=13))
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    argv = [*segment_argv(raster, out, heat, tiny_model), "--tile-size", "16", "--batch-size", "1"]
    process = subprocess.Popen([sys.executable, "-c", SLOW_RUN, *argv], stderr=subprocess.PIPE, text=True, env=env,
                               cwd=REPO_ROOT)  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:  # the model runs: the outputs' temporaries exist by now
        if "PREDICTING" in line:
            break
    assert left_in(tmp_path, raster) != []
    process.send_signal(signum)
    rest = process.communicate(timeout=60)[1]
    assert process.returncode == 128 + signum, rest
    assert f"interrupted by {signal.Signals(signum).name}" in rest and "Traceback" not in rest
    assert left_in(tmp_path, raster) == []


def _leftover(folder: Path, pid: int, host: str | None = None) -> Path:
    """A temporary as a killed run leaves it: the documented name pattern, written here independently."""
    host = host or hashlib.sha1(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:6]
    path = folder / f".classes.bicorseg-{host}-{pid}-0123456789ab.final.tmp.tif"
    path.write_bytes(b"\0" * 4096)
    return path


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_run_removes_leftovers_of_dead_processes_only(tmp_path: Path, tiny_model: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(20, 20, seed=7))
    dead = _leftover(tmp_path, _dead_pid())
    dead_aux = dead.with_name(dead.name + ".aux.xml")
    dead_aux.write_text("<PAMDataset/>")
    (tmp_path / "other").mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = _leftover(tmp_path, sleeper.pid)
        own_host = hashlib.sha1(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:6]
        elsewhere = _leftover(tmp_path / "other", _dead_pid(), host="ffffff" if own_host != "ffffff" else "eeeeee")
        foreign = tmp_path / ".classes.someone-else.tmp.tif"
        foreign.write_bytes(b"x")
        code, stderr = run_main(segment_argv(raster, tmp_path / "classes.tif", None, tiny_model))
        assert code == 0, stderr
        assert not dead.exists() and not dead_aux.exists()  # the owner is gone: removed
        assert alive.exists()  # the owner still runs: never touched
        assert foreign.exists()  # not ours
        assert "Removed 2 temporary file(s)" in stderr
        code, stderr = run_main(segment_argv(raster, tmp_path / "other" / "classes.tif", None, tiny_model))
        assert code == 0, stderr
        assert elsewhere.exists()  # another machine's (a shared folder): its pids mean nothing here
    finally:
        sleeper.kill()
        sleeper.wait()


# --- input changed during the run ----------------------------------------------------------------------------


class OverwritingBackend(SoftmaxBackend):
    """Rewrites (or replaces) the input on its first call, as another program saving over it would."""

    def __init__(self, path: Path, replace: bool) -> None:
        super().__init__()
        self.path, self.replace, self.done = path, replace, False

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if not self.done:
            self.done = True
            time.sleep(0.01)  # a later modification time even on coarse clocks
            if self.replace:
                fresh = write_raster(self.path.with_name("fresh.tif"), make_image(64, 64, seed=99))
                os.replace(fresh, self.path)
            else:
                with rasterio.open(self.path, "r+") as dataset:
                    dataset.write(make_image(64, 64, seed=99))
        return super().predict(batch)


@pytest.mark.parametrize("replace", [False, True], ids=["rewritten in place", "replaced by mv"])
def test_an_input_changed_during_the_run_exits_2_and_writes_nothing(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, replace: bool
) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(64, 64, seed=8))
    out, heat = tmp_path / "c.tif", tmp_path / "h.tif"
    backend = OverwritingBackend(raster, replace)
    monkeypatch.setattr(engine.inference.pipeline, "load_backend", lambda *args, **kwargs: backend)
    code, stderr = run_main(segment_argv(raster, out, heat, tiny_model, "--tile-size", "16"))
    assert backend.done
    assert_one_line_failure(code, stderr, "in.tif", "while it was being segmented", "nothing was written")
    assert left_in(tmp_path, raster) == []


def test_an_unchanged_input_still_commits(tmp_path: Path, tiny_model: Path) -> None:
    image = make_image(30, 30, seed=9)
    raster = write_raster(tmp_path / "in.tif", image)
    (tmp_path / "in.tif.aux.xml").write_text("<PAMDataset/>")  # a viewer's statistics sidecar is not the input
    code, stderr = run_main(segment_argv(raster, tmp_path / "c.tif", None, tiny_model))
    assert code == 0, stderr
    with rasterio.open(tmp_path / "c.tif") as dataset:
        np.testing.assert_array_equal(dataset.read(1), expected_probs(image).argmax(axis=0))


# --- tracebacks that become one line -------------------------------------------------------------------------


def test_onnxruntime_failing_to_allocate_is_one_line_naming_batch_and_tile_size(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxruntime import InferenceSession

    def out_of_memory(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
            "Name:'/Conv' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 "
            "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, "
            "onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 123456789"
        )

    monkeypatch.setattr(InferenceSession, "run", out_of_memory)
    raster = write_raster(tmp_path / "in.tif", make_image(40, 40, seed=10))
    code, stderr = run_main(segment_argv(raster, tmp_path / "c.tif", None, tiny_model))
    assert_one_line_failure(code, stderr, "out of memory", "--batch-size", "--tile-size")
    assert "bfc_arena" not in stderr and "BATCH_SIZE" not in stderr
    assert left_in(tmp_path, raster) == []


def test_memory_error_is_one_line_naming_batch_and_tile_size(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Hungry(SoftmaxBackend):
        def predict(self, batch: np.ndarray) -> np.ndarray:
            raise MemoryError

    monkeypatch.setattr(engine.inference.pipeline, "load_backend", lambda *args, **kwargs: Hungry())
    raster = write_raster(tmp_path / "in.tif", make_image(40, 40, seed=11))
    code, stderr = run_main(segment_argv(raster, tmp_path / "c.tif", tmp_path / "h.tif", tiny_model))
    assert_one_line_failure(code, stderr, "out of memory", "--batch-size", "--tile-size")
    assert left_in(tmp_path, raster) == []


def _not_a_model(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("hello, I am not a model\n")
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # a whole pickled module, which weights_only refuses
        import torch

        torch.save({"model": torch.nn.Linear(2, 2)}, path)
    return path


@pytest.mark.parametrize("kind", ["random", "text", "empty", "pickled module"])
def test_a_pt_that_is_not_a_model_is_one_short_line_never_suggesting_weights_only(tmp_path: Path, kind: str) -> None:
    model = _not_a_model(kind, Path(tempfile.mkdtemp(dir=tmp_path)))
    raster = write_raster(tmp_path / "in.tif", make_image(20, 20, seed=12))
    code, stderr = run_main(segment_argv(raster, tmp_path / "c.tif", None, model))
    assert_one_line_failure(code, stderr, f"'{model}'", "checkpoint")
    assert "weights_only" not in stderr
    assert len(error_lines(stderr)[0].replace(str(model), "")) < 260  # torch's own text ran to 730 characters

"""One owner of the model file: a segmentation run reads the file once and builds at most one inference session."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.errors import ModelLoadError
from engine.inference.pipeline import SegmentationRequest, segment_raster
from engine.model_file import ModelFile
from tests.engine.pipeline_helpers import build_tiny_onnx, make_image, write_raster

#: Paths opened since the audit hook was installed (the hook cannot be removed, so it only records).
_OPENED: list[str] = []


def _record_opens(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and args and isinstance(args[0], str | bytes):
        _OPENED.append(args[0].decode() if isinstance(args[0], bytes) else args[0])


sys.addaudithook(_record_opens)


def _opens_during(path: Path, action: Callable[[], object]) -> int:
    """How often ``path`` is opened (Python's own audit events: every file open in the process) during ``action``."""
    start = len(_OPENED)
    action()
    target = str(Path(path).resolve())
    return sum(1 for p in _OPENED[start:] if str(Path(p).resolve()) == target)


class _CountingSessions:
    """Wraps onnxruntime.InferenceSession to count how many sessions are built."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import onnxruntime as ort

        self.built = 0
        real = ort.InferenceSession
        counter = self

        def counted(*args: object, **kwargs: object) -> object:
            counter.built += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(ort, "InferenceSession", counted)


def _run(tmp_path: Path, model: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(40, 56))
    request = SegmentationRequest(
        raster, tmp_path / "out.tif", tmp_path / "heat.tif", model_path=model, tile_size_px=32
    )
    segment_raster(request)
    assert (tmp_path / "out.tif").is_file()


def test_onnx_run_reads_the_model_once_and_builds_one_session(tmp_path, monkeypatch) -> None:
    model = build_tiny_onnx(tmp_path / "tiny.onnx")
    sessions = _CountingSessions(monkeypatch)
    assert _opens_during(model, lambda: _run(tmp_path, model)) == 1
    assert sessions.built == 1


def test_without_the_onnx_package_the_card_and_the_run_share_one_session(tmp_path, monkeypatch) -> None:
    model = build_tiny_onnx(tmp_path / "tiny.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as in a QGIS that has only onnxruntime
    sessions = _CountingSessions(monkeypatch)
    assert _opens_during(model, lambda: _run(tmp_path, model)) == 1
    assert sessions.built == 1


def test_checkpoint_run_loads_it_once(tmp_path, monkeypatch, tiny_model_files, tiny_conv_registered) -> None:
    import torch

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    raster = write_raster(tmp_path / "in.tif", make_image(24, 24))
    request = SegmentationRequest(
        raster, tmp_path / "out.tif", model_path=tiny_model_files.checkpoint_path, backend="torch", device="cpu"
    )
    assert _opens_during(tiny_model_files.checkpoint_path, lambda: segment_raster(request)) == 1
    assert len(loads) == 1


def test_model_file_checksum_is_the_files_sha256(tmp_path) -> None:
    import hashlib

    model = build_tiny_onnx(tmp_path / "tiny.onnx")
    assert ModelFile.open(model).sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    assert ModelFile.open(model).kind == "onnx"


def test_unreadable_and_unknown_model_files_are_model_load_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match=r"unknown extension '\.h5'"):
        (tmp_path / "m.h5").write_bytes(b"x")
        ModelFile.open(tmp_path / "m.h5")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ModelLoadError) as info:
        ModelFile.open(bad)
    message = str(info.value)
    assert "bad.pt" in message and "weights_only=False" not in message and len(message) < 400

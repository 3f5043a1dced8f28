"""bicorseg:segmentlandcover reads its model file once per run (the plugin opens it, the engine reuses it)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis

#: Paths opened since the audit hook was installed (Python's own audit events; the hook cannot be removed).
_OPENED: list[str] = []


def _record(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and args and isinstance(args[0], str):
        _OPENED.append(args[0])


sys.addaudithook(_record)


def test_one_run_opens_the_model_file_once(tmp_path: Path, rgb_raster, tiny_model, run_alg, monkeypatch) -> None:
    import onnxruntime as ort

    model = tmp_path / "model.onnx"  # a private copy: nothing else in the session opens this path
    shutil.copy(tiny_model, model)
    sessions = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: sessions.append(1) or real(*a, **k))
    raster, _ = rgb_raster
    start = len(_OPENED)
    run_alg("bicorseg:segmentlandcover", {"INPUT": str(raster), "MODEL": str(model), "OUTPUT": str(tmp_path / "c.tif")})
    opens = [p for p in _OPENED[start:] if Path(p).resolve() == model.resolve()]
    assert len(opens) == 1, opens
    assert len(sessions) == 1

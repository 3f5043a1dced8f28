"""The engine's dependency rules: no QGIS anywhere, no torch/onnxruntime at import time of the core modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CORE_MODULES = (
    "engine",
    "engine.errors",
    "engine.model_card",
    "engine.inference.tiling",
    "engine.inference.stitching",
    "engine.raster.reader",
    "engine.progress",
    "engine.evaluation",
    "engine.evaluation.metrics",
    "engine.inference.pipeline",
    "engine.backends",
)


def test_core_modules_import_without_torch_onnxruntime_or_qgis() -> None:
    # Setting a module to None in sys.modules makes any import of it raise ImportError,
    # exactly as on a QGIS install without those packages.
    code = (
        "import sys\n"
        "for name in ('torch', 'onnxruntime', 'qgis'):\n"
        "    sys.modules[name] = None\n"
        f"import importlib\nfor m in {CORE_MODULES!r}:\n    importlib.import_module(m)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_engine_sources_use_relative_imports_only() -> None:
    # The plugin ships the engine as bicorseg_qgis.engine: an absolute "engine." import would break there.
    offenders = []
    for path in (ROOT / "engine").rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            stripped = line.strip()
            if stripped.startswith(("from engine", "import engine")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {stripped}")
    assert offenders == []


def test_every_public_engine_name_resolves() -> None:
    import engine

    missing = [name for name in engine.__all__ if not hasattr(engine, name)]
    assert missing == []

"""Exactly one engine module object per process: in the repository checkout and in the installed plugin zip.

Run in fresh interpreters (subprocesses), because which modules exist is the point of the test.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.qgis


def _python(code: str, cwd: Path, pythonpath: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_repository_checkout_has_one_engine(tmp_path: Path) -> None:
    out = _python(
        """
        import sys
        import engine, engine.errors
        import bicorseg_qgis
        from bicorseg_qgis.algorithms import base, segment_land_cover, evaluate_segmentation, export_model
        import bicorseg_qgis.engine as plugin_engine
        from engine.inference.pipeline import segment_raster  # loads the submodules under the one real name
        assert plugin_engine is engine, "two engine module objects"
        assert base.BiCoRSegError is engine.errors.BiCoRSegError
        assert plugin_engine.segment_raster is segment_raster
        doubles = sorted(m for m in sys.modules if m.startswith("bicorseg_qgis.engine."))
        assert doubles == [], doubles
        # the training package the same way: the repository's own, one module object
        import training
        from bicorseg_qgis.algorithms import train_model, export_training_data
        import bicorseg_qgis.training as plugin_training
        assert plugin_training is training, "two training module objects"
        from bicorseg_qgis.training import ChipRequest, write_chips  # the public API, loaded lazily
        from training.chips import ChipRequest as real
        assert ChipRequest is real and "torch" not in sys.modules  # chips and the plugin import no torch
        doubles = sorted(m for m in sys.modules if m.startswith("bicorseg_qgis.training."))
        assert doubles == [], doubles
        print("ok")
        """,
        cwd=tmp_path,
        pythonpath=str(REPO),
    )
    assert out.strip() == "ok"


def test_installed_zip_has_one_engine_and_no_generic_names(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("package_plugin", REPO / "scripts" / "package_plugin.py")
    assert spec is not None and spec.loader is not None
    packager = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(packager)
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(packager.build_zip(tmp_path / "bicorseg_qgis.zip")) as archive:
        archive.extractall(plugins)
    out = _python(
        """
        import sys
        import bicorseg_qgis
        from bicorseg_qgis.algorithms import base, segment_land_cover
        from bicorseg_qgis.engine import ModelFile, segment_raster
        from bicorseg_qgis.training import checkpoints, inference  # training code inside the plugin
        from bicorseg_qgis.engine.models import from_checkpoint
        from bicorseg_qgis.training import FinetuneRequest, run_finetune, write_chips  # the API the algorithms use
        from bicorseg_qgis.algorithms import train_model, export_training_data
        assert "engine" not in sys.modules and "training" not in sys.modules, "a generic top-level name"
        assert checkpoints.model_from_checkpoint is from_checkpoint.model_from_checkpoint
        assert run_finetune.__module__ == "bicorseg_qgis.training.finetune"
        assert sys.modules["bicorseg_qgis.training"].__file__.startswith(bicorseg_qgis.__file__.rsplit("/", 1)[0])
        assert base.BiCoRSegError is sys.modules["bicorseg_qgis.engine.errors"].BiCoRSegError
        assert ModelFile.__module__ == "bicorseg_qgis.engine.model_file"
        print("ok", bicorseg_qgis.__file__)
        """,
        cwd=tmp_path,
        pythonpath=str(plugins),
    )
    assert out.startswith("ok") and str(plugins) in out


def _engine_imports(path: Path) -> list[str]:
    """Import statements in a plugin file that reach into the engine below its package root."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("engine."):
            bad.append(f"{path.name}:{node.lineno}: from {'.' * node.level}{node.module} import ...")
        elif isinstance(node, ast.Import):
            bad += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names if a.name.startswith("engine.")]
    return bad


def test_the_plugin_imports_only_the_engine_package_root() -> None:
    # Through the sys.modules link, "bicorseg_qgis.engine.X" would load engine submodule X a second time.
    offenders = [bad for path in (REPO / "bicorseg_qgis").rglob("*.py") for bad in _engine_imports(path)]
    assert offenders == []


#: The only plugin modules that may reach the training package (DESIGN.md's dependency rule).
TRAINING_IMPORTERS = {
    "train_model.py",
    "export_training_data.py",
    "training_inputs.py",
}  # the last: their shared label reading


def _training_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(file, line, inside a function) of every import of the training package in a plugin file."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    lazy = {id(child) for f in functions for child in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            hits = (
                module == "training"
                or module.startswith("training.")
                or (node.level > 0 and module == "" and any(a.name == "training" for a in node.names))
            )
            if hits:
                found.append(
                    (f"{path.name}:{node.lineno}: from {'.' * node.level}{module}", node.lineno, id(node) in lazy)
                )
        elif isinstance(node, ast.Import):
            found += [
                (f"{path.name}:{node.lineno}: import {a.name}", node.lineno, id(node) in lazy)
                for a in node.names
                if a.name == "training" or a.name.startswith("training.")
            ]
    return found


def test_only_the_training_algorithms_import_training_lazily_and_only_its_root() -> None:
    offenders = []
    for path in (REPO / "bicorseg_qgis").rglob("*.py"):
        for text, _, lazy in _training_imports(path):
            if path.name == "__init__.py" and path.parent.name == "bicorseg_qgis" and text.endswith("import training"):
                continue  # the checkout link (import-linter's one ignored import)
            if path.name not in TRAINING_IMPORTERS or not lazy or not text.split(": ", 1)[1].startswith("from .."):
                offenders.append(text)
            elif "from ..training." in text:
                offenders.append(text + " (a submodule: use the package root)")
    assert offenders == []
    used = {path.name for path in (REPO / "bicorseg_qgis" / "algorithms").glob("*.py") if _training_imports(path)}
    assert used == TRAINING_IMPORTERS

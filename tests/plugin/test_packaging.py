"""The plugin zip: one top folder, the engine and training inside (no generic names), no tests/caches, < 25 MB, clean security scans,
and it installs into a fresh QGIS profile where qgis_process runs Segment land cover from it."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from .conftest import class_map, write_rgb

pytestmark = pytest.mark.qgis

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
REQUIRED_METADATA = (
    "name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
    "tracker", "homepage", "category", "icon", "tags", "changelog", "experimental", "deprecated",
    "hasProcessingProvider", "supportsQt6", "license",
)  # fmt: skip


def _packager():
    spec = importlib.util.spec_from_file_location("package_plugin", REPO / "scripts" / "package_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    return _packager().build_zip(tmp_path_factory.mktemp("dist") / "bicorseg_qgis.zip")


@pytest.fixture(scope="module")
def extracted(plugin_zip, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(target)
    return target


def test_zip_has_one_top_folder_with_plugin_engine_resources_metadata_and_licence(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {name.split("/")[0] for name in names} == {"bicorseg_qgis"}
    for required in (
        "bicorseg_qgis/__init__.py", "bicorseg_qgis/metadata.txt", "bicorseg_qgis/LICENSE",
        "bicorseg_qgis/provider.py", "bicorseg_qgis/algorithms/segment_land_cover.py",
        "bicorseg_qgis/engine/__init__.py", "bicorseg_qgis/engine/inference/pipeline.py", "bicorseg_qgis/engine/errors.py",
        "bicorseg_qgis/resources/icons/bicorseg.svg",
    ):  # fmt: skip
        assert required in names, required
    if (REPO / "resources" / "models" / "default.onnx").is_file():
        assert "bicorseg_qgis/resources/models/default.onnx" in names


def test_zip_leaves_out_tests_and_caches_and_stays_small(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    for name in names:
        parts = name.split("/")
        assert "__pycache__" not in parts and not name.endswith(".pyc"), name
        assert "tests" not in parts, name
        assert parts[1] != "training" or parts[0] == "bicorseg_qgis", name
        assert not name.endswith(".int8.onnx"), name  # the repository keeps the int8 variant; the zip has no room
    assert plugin_zip.stat().st_size < 25 * 1024 * 1024


def test_engine_in_the_zip_is_a_real_copy_not_a_link(plugin_zip):
    archive = zipfile.ZipFile(plugin_zip)
    pipeline = archive.read("bicorseg_qgis/engine/inference/pipeline.py")
    assert pipeline == (REPO / "engine" / "inference" / "pipeline.py").read_bytes()


def test_metadata_has_every_field_the_plugin_repository_requires(extracted):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(extracted / "bicorseg_qgis" / "metadata.txt", encoding="utf-8")
    general = parser["general"]
    for field in REQUIRED_METADATA:
        assert general.get(field, "").strip(), field
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes"
    assert general["supportsQt6"] == "True"
    assert (extracted / "bicorseg_qgis" / general["icon"]).is_file()


def test_bandit_finds_nothing_in_the_zip(extracted):
    proc = subprocess.run(
        [str(VENV_BIN / "bandit"), "-r", str(extracted / "bicorseg_qgis"), "-f", "json", "-q"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert not findings, "\n".join(findings)


def test_detect_secrets_finds_nothing_in_the_zip(extracted):
    proc = subprocess.run(
        [str(VENV_BIN / "detect-secrets"), "scan", "--all-files", "bicorseg_qgis"],
        capture_output=True, text=True, timeout=120, check=True, cwd=extracted,
    )  # fmt: skip
    assert json.loads(proc.stdout)["results"] == {}


def _qgis_process(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        QT_QPA_PLATFORM="offscreen",
        QGIS_CUSTOM_CONFIG_PATH=str(profile),
        # Only the third-party packages (what a user pip-installs for QGIS): never the repository itself,
        # so the plugin and its engine can only come from the installed zip.
        PYTHONPATH=str(Path(np.__file__).resolve().parents[1]),
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        ["qgis_process.bin", *args], capture_output=True, text=True, timeout=180, env=env, check=False
    )


def test_installed_zip_runs_segment_land_cover_in_qgis_process(tmp_path, plugin_zip, tiny_model):
    profile = tmp_path / "config"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    enabled = _qgis_process(["plugins", "enable", "bicorseg_qgis"], profile)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr

    classes = class_map(32, 40)
    raster = write_rgb(tmp_path / "input.tif", classes)
    output = tmp_path / "classes.tif"
    run = _qgis_process(
        ["run", "bicorseg:segmentlandcover", "--", f"INPUT={raster}", f"MODEL={tiny_model}", f"OUTPUT={output}"],
        profile,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "BACKEND_USED:\tonnxruntime" in run.stdout
    with rasterio.open(output) as out:
        np.testing.assert_array_equal(out.read(1), classes)
    assert output.with_suffix(".qml").is_file()  # the style survives qgis_process


def test_installed_zip_does_not_import_the_repository_engine(tmp_path, plugin_zip):
    profile = tmp_path / "config"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    _qgis_process(["plugins", "enable", "bicorseg_qgis"], profile)
    report = tmp_path / "diag.json"
    run = _qgis_process(["run", "bicorseg:diagnostics", "--", f"OUTPUT={report}"], profile)
    assert run.returncode == 0, run.stdout + run.stderr
    diagnosis = json.loads(report.read_text())["engine_diagnosis"]
    assert diagnosis["default_model"]["path"].startswith(str(plugins / "bicorseg_qgis"))


def test_training_in_the_zip_imports_the_engine_inside_the_plugin(plugin_zip):
    archive = zipfile.ZipFile(plugin_zip)
    checkpoints = archive.read("bicorseg_qgis/training/checkpoints.py").decode()
    assert "from bicorseg_qgis.engine.model_file import read_checkpoint" in checkpoints
    offenders = [
        f"{name}: {line.strip()}"
        for name in archive.namelist()
        if name.startswith("bicorseg_qgis/training/") and name.endswith(".py")
        for line in archive.read(name).decode().splitlines()
        if line.strip().startswith(("from engine", "import engine", "from training", "import training"))
    ]
    assert offenders == []


def test_qgis_process_lists_the_enums_with_numbers_and_runs_with_them(tmp_path, plugin_zip, tiny_model):
    profile = tmp_path / "config"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    _qgis_process(["plugins", "enable", "bicorseg_qgis"], profile)
    help_text = _qgis_process(["help", "bicorseg:segmentlandcover"], profile).stdout
    for name, options in (
        ("DEVICE", ("auto", "cpu", "cuda")),
        ("BACKEND", ("auto", "onnxruntime", "torch")),
        ("VALUE_SCALING", ("card", "minmax", "percentile")),
    ):
        found = re.search(rf"\n{name}: [^\n]*\n\tArgument type:.*?(?=\n\S|\Z)", help_text, re.DOTALL)
        assert found, help_text
        block = found.group(0)
        assert "Argument type:\tenum" in block, block
        for number, option in enumerate(options):
            assert f"- {number}: {option}" in block, block
    assert "RESAMPLE: " in help_text

    classes = class_map(32, 40)
    raster = write_rgb(tmp_path / "input.tif", classes)
    for device, backend, scaling, name in (("1", "1", "0", "numbers"), ("cpu", "onnxruntime", "card", "strings")):
        output = tmp_path / f"{name}.tif"
        run = _qgis_process(
            ["run", "bicorseg:segmentlandcover", "--", f"INPUT={raster}", f"MODEL={tiny_model}", f"DEVICE={device}",
             f"BACKEND={backend}", f"VALUE_SCALING={scaling}", "RESAMPLE=false", f"OUTPUT={output}"],
            profile,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "DEVICE_USED:\tcpu" in run.stdout and "BACKEND_USED:\tonnxruntime" in run.stdout
        with rasterio.open(output) as out:
            np.testing.assert_array_equal(out.read(1), classes)
    refused = _qgis_process(
        ["run", "bicorseg:segmentlandcover", "--", f"INPUT={raster}", "DEVICE=3", f"OUTPUT={tmp_path / 'x.tif'}"],
        profile,
    )
    assert refused.returncode != 0 and "DEVICE" in refused.stdout + refused.stderr

"""The README's shell lines, verbatim, in a fresh QGIS profile: enable, install dependencies with the real pip
from the real registry, segment with the embedded default model. Nothing of the repository or its .venv is on
any path: the plugin comes from the built zip, its packages from the installer's folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from .conftest import class_map, write_rgb
from .test_packaging import _packager

pytestmark = [pytest.mark.qgis, pytest.mark.network]

REPO = Path(__file__).resolve().parents[2]
#: The user's own environment that pip and QGIS legitimately read; everything else (PYTHONPATH, VIRTUAL_ENV, ...)
#: is dropped, as in `env -i`.
PASSED_THROUGH = ("HOME", "LANG", "USER", "LOGNAME", "TMPDIR", "XDG_CONFIG_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR")
PROXY = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def readme_commands() -> list[list[str]]:
    """The qgis_process lines of the README's fresh-profile block, split like a shell would."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- fresh-profile-commands -->\s*```bash\n(.*?)```", text, re.DOTALL)
    assert block, "README.md lost its <!-- fresh-profile-commands --> block"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def minimal_env(profile: Path) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen", "OMP_NUM_THREADS": "1"}
    for name, value in os.environ.items():
        if name in PASSED_THROUGH or name in PROXY or name.startswith("PIP_"):
            env[name] = value
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(profile)
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_readme_commands_work_in_a_fresh_profile(tmp_path):
    commands = readme_commands()
    assert [c[:3] for c in commands] == [
        ["qgis_process.bin", "plugins", "enable"],
        ["qgis_process.bin", "run", "bicorseg:installdependencies"],
        ["qgis_process.bin", "run", "bicorseg:segmentlandcover"],
    ]
    plugin_zip = _packager().build_zip(tmp_path / "dist" / "bicorseg_qgis.zip")
    profile = tmp_path / "config"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    work = tmp_path / "work"
    work.mkdir()
    classes = class_map(48, 64)
    write_rgb(work / "image.tif", classes, nodata_rows=5)
    env = minimal_env(profile)
    assert not any(str(REPO) in value for value in env.values())

    run(commands[0], env, work)
    start = time.monotonic()
    installed = run(commands[1], env, work)
    install_s = time.monotonic() - start
    folder = profile / "profiles" / "default" / "python" / "dependencies" / "bicorseg-qgis"
    assert f"FOLDER:\t{folder}" in installed.stdout
    assert "Successfully installed" in installed.stdout  # pip's own output streamed into the Processing log
    assert (folder / "onnxruntime").is_dir() and (folder / "rasterio").is_dir()
    assert not list(folder.glob("numpy*")) and not list(folder.glob("osgeo*"))  # QGIS's numpy/GDAL stay in charge
    print(f"installdependencies took {install_s:.1f} s")

    start = time.monotonic()
    again = run(commands[1], env, work)
    assert "Already installed" in again.stdout and "Successfully installed" not in again.stdout
    assert time.monotonic() - start < 30

    segmented = run(commands[2], env, work)
    assert "BACKEND_USED:\tonnxruntime" in segmented.stdout
    with rasterio.open(work / "classes.tif") as out:
        assert out.count == 1 and out.dtypes[0] == "uint8" and out.nodata == 255
        assert (out.width, out.height) == (64, 48)
        values = out.read(1)
    assert (values[:5] == 255).all()  # input nodata rows
    assert values[5:].max() < 5  # the default model's five classes everywhere else
    assert np.isin(np.unique(values[5:]), np.arange(5)).all()
    assert (work / "classes.qml").is_file()

    report = tmp_path / "diag.json"
    diag = run(["qgis_process.bin", "run", "bicorseg:diagnostics", "--", f"OUTPUT={report}"], env, work)
    data = json.loads(report.read_text())
    assert data["missing_packages"] == [], diag.stdout
    assert data["dependencies"]["folder"] == str(folder) and data["dependencies"]["on_sys_path"]
    assert data["engine_diagnosis"]["numpy"].startswith("1."), data["engine_diagnosis"]

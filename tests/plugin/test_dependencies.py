"""The dependency installer's logic (bicorseg_qgis/dependencies.py), with the real pip and real interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bicorseg_qgis import dependencies as deps

QGIS_HOST = {"numpy": "1.24.2", "gdal": "3.6.2", "pyqt5": "5.15.9", "pyqt6": None}
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _small_plan(*requirements: str, excluded: tuple[str, ...] = ("numpy",)) -> deps.InstallPlan:
    """A plan with tiny pure-Python wheels, so tests exercise the real pip quickly."""
    return deps.InstallPlan(
        profile="cpu", requirements=requirements, constraints=(), excluded=excluded,
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
    )  # fmt: skip


def _pip_python() -> Path:
    python, _ = deps.find_python()
    return python


def test_cpu_plan_pins_the_packages_and_holds_qgis_numpy_and_gdal():
    plan = deps.plan_install("cpu", QGIS_HOST, python="3.11")
    assert plan.requirements == ("onnxruntime==1.31.1", "rasterio==1.4.4", "affine==2.4.0")
    assert plan.constraints == ("gdal==3.6.2", "numpy==1.24.2", "pyqt5==5.15.9")
    assert plan.excluded == ("gdal", "numpy", "pyqt5")
    assert all("==" in r for r in plan.requirements)


def test_cuda_plan_swaps_onnxruntime_for_the_gpu_build_and_training_adds_the_cpu_torch():
    cuda = deps.plan_install("cuda", QGIS_HOST)
    assert "onnxruntime-gpu==1.31.1" in cuda.requirements
    assert not any(r.startswith("onnxruntime==") for r in cuda.requirements)
    training = deps.plan_install("training", QGIS_HOST)
    assert "torch==2.13.0" in training.requirements and "affine==2.4.0" in training.requirements


def test_plan_without_numpy_in_qgis_installs_numpy_below_2():
    plan = deps.plan_install("cpu", {"numpy": None, "gdal": None})
    assert "numpy<2" in plan.requirements and plan.constraints == () and plan.excluded == ()


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match="cpu, cuda, training"):
        deps.plan_install("gpu", QGIS_HOST)


def test_host_versions_are_the_running_interpreters():
    import numpy
    from osgeo import gdal

    host = deps.host_versions()
    assert host["numpy"] == numpy.__version__
    assert host["gdal"] == gdal.__version__


def test_folder_is_private_to_the_plugin_inside_the_profile(tmp_path):
    folder = deps.dependencies_folder(tmp_path / "profiles" / "default")
    assert folder == tmp_path / "profiles" / "default" / "python" / "dependencies" / "bicorseg-qgis"
    assert not folder.name.isidentifier()  # never importable itself


def test_python_candidates_skip_the_qgis_binary():
    linux = deps.python_candidates("/usr/bin/qgis", None, "/usr", (3, 11), "Linux")
    assert linux[0] == Path("/usr/bin/python3.11")
    assert Path("/usr/bin/qgis") not in linux
    windows = deps.python_candidates(
        r"C:\OSGeo4W\bin\qgis-bin.exe", None, r"C:\OSGeo4W\apps\Python312", (3, 12), "Windows"
    )
    assert windows[0].name == "python.exe" and "Python312" in str(windows[0])
    venv = deps.python_candidates("/x/.venv/bin/python", "/usr/bin/python3.11", "/usr", (3, 11), "Linux")
    assert venv[:2] == [Path("/x/.venv/bin/python"), Path("/usr/bin/python3.11")]


def test_find_python_finds_pip_beside_exec_prefix_when_the_executable_is_qgis():
    python, pip_line = deps.find_python(
        executable="/usr/bin/qgis", base_executable=None, exec_prefix="/usr", version=sys.version_info[:2]
    )
    assert python.name.startswith("python") and python.parent == Path("/usr/bin")
    assert pip_line.startswith("pip ")


def test_find_python_without_pip_names_the_apt_package(tmp_path):
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(tmp_path / "nopip")], check=True)
    with pytest.raises(deps.PipUnavailableError, match="apt install python3-pip") as info:
        deps.find_python(
            executable=str(tmp_path / "nopip" / "bin" / "python"), base_executable=None,
            exec_prefix=str(tmp_path / "nowhere"), version=sys.version_info[:2], system="Linux",
        )  # fmt: skip
    assert "No module named pip" in str(info.value)


def test_find_python_rejects_an_interpreter_of_another_version(tmp_path):
    with pytest.raises(deps.PipUnavailableError, match=r"pip is not available for the Python 3\.99"):
        deps.find_python(executable=str(SYSTEM_PYTHON), base_executable=None, exec_prefix="/usr", version=(3, 99))


def test_shadow_check_finds_numpy_gdal_and_qt_but_not_rasterio(tmp_path):
    for name in ("numpy", "numpy.libs", "osgeo", "rasterio", "rasterio.libs", "affine"):
        (tmp_path / name).mkdir()
    for name in ("numpy-1.26.4.dist-info", "GDAL-3.6.2.dist-info", "rasterio-1.4.4.dist-info", "PyQt5"):
        (tmp_path / name).mkdir()
    (tmp_path / "_gdal.cpython-311-x86_64-linux-gnu.so").touch()
    found = deps.shadowing_entries(tmp_path)
    assert sorted(found) == sorted([
        "numpy", "numpy.libs", "osgeo", "numpy-1.26.4.dist-info", "GDAL-3.6.2.dist-info", "PyQt5",
        "_gdal.cpython-311-x86_64-linux-gnu.so",
    ])  # fmt: skip


def test_pins_from_a_pip_report_leave_out_what_qgis_owns():
    report = {"install": [
        {"metadata": {"name": "rasterio", "version": "1.4.4"}},
        {"metadata": {"name": "numpy", "version": "1.24.2"}},
        {"metadata": {"name": "Click", "version": "8.5.1"}},
    ]}  # fmt: skip
    assert deps.pins_from_report(report, ["numpy"]) == ["Click==8.5.1", "rasterio==1.4.4"]
    with pytest.raises(deps.DependencyInstallError, match="upgrade pip"):
        deps.pins_from_report({}, [])


def test_swap_replaces_the_folder_and_removes_the_previous_one(tmp_path):
    folder = tmp_path / "bicorseg-qgis"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    deps.swap_into_place(staging, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bicorseg-qgis"]
    assert [p.name for p in folder.iterdir()] == ["new.txt"]


def test_activate_puts_the_folder_first_only_for_the_python_it_was_installed_for(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert not deps.activate(tmp_path)  # no stamp: not an install
    (tmp_path / deps.STAMP_NAME).write_text(json.dumps({"python": "2.7"}))
    assert not deps.activate(tmp_path)
    (tmp_path / deps.STAMP_NAME).write_text(json.dumps({"python": f"{sys.version_info[0]}.{sys.version_info[1]}"}))
    assert deps.activate(tmp_path)
    assert sys.path[0] == str(tmp_path)
    assert deps.activate(tmp_path) and sys.path.count(str(tmp_path)) == 1


def test_run_streaming_passes_lines_as_they_come_and_cancel_stops_the_process():
    script = "import time\nprint('first', flush=True)\ntime.sleep(60)\nprint('never')"
    seen: list[tuple[float, str]] = []
    start = time.monotonic()
    with pytest.raises(deps.InstallCanceledError, match="unchanged"):
        deps.run_streaming([sys.executable, "-c", script], lambda line: seen.append((time.monotonic(), line)),
                           lambda: bool(seen))  # fmt: skip
    assert [line for _, line in seen] == ["first"]
    assert time.monotonic() - start < 20  # canceled, not waited out


def test_missing_modules_names_alternatives():
    assert deps.missing_modules((("json", "bicorseg_no_such_module"), ("no_a", "no_b"))) == [
        "bicorseg_no_such_module", "no_a or no_b",
    ]  # fmt: skip
    assert deps.missing_modules((("json",), ("no_a", "os"))) == []


@pytest.mark.network
def test_install_with_real_pip_writes_the_stamp_and_is_then_satisfied(tmp_path):
    folder = tmp_path / "profile" / "python" / "dependencies" / "bicorseg-qgis"
    plan = _small_plan("affine==2.4.0")
    lines: list[str] = []
    result = deps.install(plan, folder, _pip_python(), lines.append)
    assert result.pins == ("affine==2.4.0",)
    assert (folder / "affine" / "__init__.py").is_file()
    assert deps.is_satisfied(folder, plan)
    assert not deps.is_satisfied(folder, _small_plan("affine==2.3.1"))
    assert any("affine" in line for line in lines)  # pip's own output reached the callback
    assert sorted(p.name for p in folder.parent.iterdir()) == ["bicorseg-qgis"]  # no staging left
    assert deps.shadowing_entries(folder) == []


@pytest.mark.network
def test_resolution_holds_numpy_at_qgis_version_and_leaves_it_out(tmp_path):
    folder = tmp_path / "deps"
    import numpy

    plan = deps.InstallPlan("cpu", ("affine==2.4.0", "numpy<3"), (f"numpy=={numpy.__version__}",), ("numpy",),
                            f"{sys.version_info[0]}.{sys.version_info[1]}")  # fmt: skip
    result = deps.install(plan, folder, _pip_python(), lambda line: None)
    assert result.pins == ("affine==2.4.0",)  # numpy was resolved (pinned to QGIS's) but not installed
    assert not (folder / "numpy").exists()


@pytest.mark.network
def test_failed_install_leaves_the_previous_folder_working(tmp_path):
    folder = tmp_path / "deps"
    python = _pip_python()
    good = _small_plan("affine==2.4.0")
    deps.install(good, folder, python, lambda line: None)
    before = (folder / deps.STAMP_NAME).read_text()
    with pytest.raises(deps.DependencyInstallError, match="pip failed") as info:
        deps.install(_small_plan("bicorseg-no-such-package==0.0.1"), folder, python, lambda line: None)
    assert "bicorseg-no-such-package" in str(info.value)  # pip's own words are in the message
    assert (folder / deps.STAMP_NAME).read_text() == before
    assert (folder / "affine" / "__init__.py").is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["deps"]


@pytest.mark.network
def test_canceled_install_leaves_the_previous_folder_and_no_staging(tmp_path):
    folder = tmp_path / "deps"
    python = _pip_python()
    deps.install(_small_plan("affine==2.4.0"), folder, python, lambda line: None)
    lines: list[str] = []
    with pytest.raises(deps.InstallCanceledError):
        deps.install(_small_plan("affine==2.3.1"), folder, python, lines.append, lambda: len(lines) >= 2)
    assert json.loads((folder / deps.STAMP_NAME).read_text())["requirements"] == ["affine==2.4.0"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["deps"]


@pytest.mark.network
def test_a_package_qgis_owns_in_the_folder_is_refused(tmp_path, monkeypatch):
    # A requirement set whose resolution brings numpy without excluding it: the shadow check must refuse it.
    folder = tmp_path / "deps"
    monkeypatch.setattr(os, "environ", dict(os.environ))
    plan = _small_plan("numpy==1.24.2", excluded=())
    with pytest.raises(deps.DependencyInstallError, match="shadow packages QGIS is built against"):
        deps.install(plan, folder, _pip_python(), lambda line: None)
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []

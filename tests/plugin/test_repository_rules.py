"""`make package`'s zip passes plugins.qgis.org's rules and carries a README for plugin users."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .test_packaging import _packager

REPO = Path(__file__).resolve().parents[2]
FIELDS = (
    "name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "homepage", "tracker",
    "repository", "tags", "icon",
)  # fmt: skip


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    """Built the way `make package` builds it: the packaging script as a command."""
    output = tmp_path_factory.mktemp("dist") / "bicorseg_qgis.zip"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "package_plugin.py"), "--output", str(output)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return output


def test_built_zip_passes_the_plugin_repository_rules(built_zip):
    assert _packager().repository_rule_problems(built_zip) == []
    assert built_zip.stat().st_size < 25 * 1024 * 1024
    names = zipfile.ZipFile(built_zip).namelist()
    assert {name.split("/")[0] for name in names} == {"bicorseg_qgis"} and all("/" in n for n in names)
    for name in names:
        assert "__pycache__" not in name.split("/"), name
        assert not name.endswith((".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib", ".exe")), name
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(zipfile.ZipFile(built_zip).read("bicorseg_qgis/metadata.txt").decode())
    general = parser["general"]
    for field in FIELDS:
        assert general.get(field, "").strip(), field
    assert general.get("license") or general.get("licence")
    assert f"bicorseg_qgis/{general['icon']}" in names
    assert "installdependencies" in general["about"] or "Install dependencies" in general["about"]


def test_rule_check_rejects_what_the_repository_rejects(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("engine/__init__.py", "")
        archive.writestr("engine/__pycache__/x.cpython-311.pyc", b"\0")
        archive.writestr("engine/native.so", b"\0")
        archive.writestr("engine/metadata.txt", "[general]\nname=x\nversion=1\n")
        archive.writestr("README.md", "loose file")
    problems = "\n".join(_packager().repository_rule_problems(bad))
    assert "exactly one top folder" in problems
    assert "generic top-level name 'engine'" in problems
    assert "__pycache__/x.cpython-311.pyc" in problems and "engine/native.so" in problems
    for field in ("qgisMinimumVersion", "email", "tracker", "repository", "icon", "license"):
        assert f"lacks {field}" in problems, field


def test_zip_carries_the_readme_for_plugin_users(built_zip):
    text = zipfile.ZipFile(built_zip).read("bicorseg_qgis/README.md").decode("utf-8")
    assert text == (REPO / "docs" / "plugin-readme.md").read_text(encoding="utf-8")
    for heading in ("## Install", "## Dependencies (the installer)", "## First run", "## Where files go",
                    "## Uninstall"):  # fmt: skip
        assert heading in text, heading
    assert "bicorseg:installdependencies" in text
    assert "python/dependencies/bicorseg-qgis" in text
    assert "pip install --user" not in text  # PEP 668 refuses it on Debian/Ubuntu

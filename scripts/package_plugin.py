"""Build dist/bicorseg_qgis.zip, the file uploaded to plugins.qgis.org.

The zip holds ONE top folder, ``bicorseg_qgis/``: the plugin code, a real copy of the engine as
``bicorseg_qgis/engine`` (the engine's imports are all relative, so it needs no change), the training package as
``bicorseg_qgis/training`` (its absolute ``engine``/``training`` imports are rewritten to ``bicorseg_qgis.engine`` /
``bicorseg_qgis.training``, as pip's own vendoring tool does, so the installed plugin adds no generic top-level
name to QGIS's interpreter and holds exactly one engine), the resources (icons, styles, the default model if present),
``metadata.txt``, ``LICENSE`` and ``README.md`` (``docs/plugin-readme.md``: install, dependencies, first run, where
files go, uninstall). Caches, tests and the training package never go in, and the zip must stay under the
repository's 25 MB limit. Entries are written in sorted order with a fixed timestamp so that builds are reproducible.

Usage: python scripts/package_plugin.py [--output dist/bicorseg_qgis.zip]
"""

from __future__ import annotations

import argparse
import configparser
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "bicorseg_qgis"
MAX_ZIP_BYTES = 25 * 1024 * 1024
FIXED_DATE = (2024, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", "tests", "training", ".hypothesis"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}
#: Sample rasters for the README are not needed by the plugin; keep the download small.
SKIP_RESOURCE_DIRS = {"sample"}
#: The int8 variant of the default model stays in the repository (engine command line, MODEL = its path). Measured
#: zips: fp32 only 19.83 MB (shipped), int8 only 5.16 MB, both 24.83 MB (0.17 MB under the 25 MB limit). The engine
#: loads ``default.onnx`` (fp32) as the default; the decision and its reasons are in docs/plugin.md.
SKIP_RESOURCE_SUFFIXES = (".int8.onnx",)
#: Files copied to the plugin folder: (source in the repository, name inside ``bicorseg_qgis/``).
TOP_FILES = (("metadata.txt", "metadata.txt"), ("LICENSE", "LICENSE"), ("docs/plugin-readme.md", "README.md"))
#: metadata.txt fields plugins.qgis.org requires or checks (licence under either spelling).
REQUIRED_METADATA = (
    "name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "homepage", "tracker",
    "repository", "tags", "icon",
)  # fmt: skip
#: Compiled or binary files the plugin repository rejects.
BINARY_SUFFIXES = (".pyc", ".pyo", ".pyd", ".so", ".dll", ".dylib", ".exe", ".o", ".a", ".lib")
#: Top-level names that would collide with other plugins or packages in QGIS's shared interpreter.
GENERIC_NAMES = {"engine", "src", "lib", "libs", "utils", "common", "core", "plugin", "plugins", "tests", "test"}


def iter_files(root: Path, skip_dirs: set[str] = SKIP_DIRS) -> Iterator[Path]:
    """Files below ``root`` (symlinks followed), sorted, without caches or excluded folders."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in skip_dirs for part in relative.parts[:-1]) or path.name in skip_dirs:
            continue
        if path.is_file() and path.suffix not in SKIP_SUFFIXES:
            yield path


#: Absolute imports of the repository's top-level packages, as they appear in the training package's sources.
_VENDORED_IMPORT = re.compile(r"^(\s*)(from|import)\s+(engine|training)(?=[.\s])", re.MULTILINE)


def vendored_source(name: str, data: bytes) -> bytes:
    """The bytes that go into the zip for ``name``: training's Python files get their imports re-rooted."""
    if not (name.startswith(f"{PLUGIN}/training/") and name.endswith(".py")):
        return data
    text = data.decode("utf-8")
    return _VENDORED_IMPORT.sub(lambda m: f"{m.group(1)}{m.group(2)} {PLUGIN}.{m.group(3)}", text).encode("utf-8")


def plugin_entries(repo: Path = REPO) -> list[tuple[str, Path]]:
    """(name inside the zip, source file) for every file of the plugin package, in order."""
    package = repo / PLUGIN
    entries: list[tuple[str, Path]] = []
    for path in iter_files(package, SKIP_DIRS | {"engine", "resources"}):
        entries.append((f"{PLUGIN}/{path.relative_to(package).as_posix()}", path))
    for package_name in ("engine", "training"):
        root = repo / package_name
        for path in iter_files(root, SKIP_DIRS - {"training"}):
            entries.append((f"{PLUGIN}/{package_name}/{path.relative_to(root).as_posix()}", path))
    for path in iter_files(repo / "resources", SKIP_DIRS | SKIP_RESOURCE_DIRS):
        if path.name.endswith(SKIP_RESOURCE_SUFFIXES):
            continue
        entries.append((f"{PLUGIN}/resources/{path.relative_to(repo / 'resources').as_posix()}", path))
    for source_name, name in TOP_FILES:
        source = repo / source_name
        if not source.is_file():
            raise SystemExit(f"error: {source} is missing; the plugin zip needs it as {PLUGIN}/{name}.")
        entries.append((f"{PLUGIN}/{name}", source))
    return entries


def repository_rule_problems(path: Path) -> list[str]:
    """Every plugins.qgis.org rule the zip at ``path`` breaks (empty when it passes).

    Rules: at most 25 MB; exactly one top folder, not a generic name; no compiled files or ``__pycache__``;
    ``metadata.txt`` in that folder with the required fields, a licence and an existing icon.
    """
    problems: list[str] = []
    if path.stat().st_size > MAX_ZIP_BYTES:
        problems.append(f"zip is {path.stat().st_size / 1e6:.1f} MB (limit 25 MB)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        tops = sorted({name.split("/")[0] for name in names})
        if len(tops) != 1 or not all("/" in name for name in names):
            problems.append(f"zip must hold exactly one top folder, found {tops}")
        problems += [f"generic top-level name {top!r}" for top in tops if top.lower() in GENERIC_NAMES]
        for name in names:
            if "__pycache__" in name.split("/") or name.lower().endswith(BINARY_SUFFIXES):
                problems.append(f"compiled file or cache in the zip: {name}")
        folders = sorted({name.split("/")[0] for name in names if "/" in name})
        top = folders[0] if folders else ""
        if f"{top}/metadata.txt" not in names:
            return [*problems, "metadata.txt missing from the top folder"]
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(archive.read(f"{top}/metadata.txt").decode("utf-8"))
        general = parser["general"] if parser.has_section("general") else {}
        problems += [f"metadata.txt lacks {field}" for field in REQUIRED_METADATA if not general.get(field, "").strip()]
        if not (general.get("license", "").strip() or general.get("licence", "").strip()):
            problems.append("metadata.txt lacks license")
        icon = general.get("icon", "").strip()
        if icon and f"{top}/{icon}" not in names:
            problems.append(f"icon {icon} named in metadata.txt is not in the zip")
    return problems


def build_zip(output: Path, repo: Path = REPO) -> Path:
    """Write the plugin zip to ``output`` and return it; raises SystemExit if it breaks a repository rule."""
    entries = plugin_entries(repo)
    if not any(name == f"{PLUGIN}/__init__.py" for name, _ in entries):
        raise SystemExit(f"error: {repo / PLUGIN / '__init__.py'} is missing.")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, source in entries:
            info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, vendored_source(name, source.read_bytes()))
    problems = repository_rule_problems(partial)
    if problems:
        partial.unlink()
        raise SystemExit("error: the zip breaks plugins.qgis.org rules: " + "; ".join(problems))
    partial.replace(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "dist" / f"{PLUGIN}.zip")
    args = parser.parse_args(argv)
    path = build_zip(args.output)
    sys.stdout.write(f"{path} ({path.stat().st_size / 1e6:.2f} MB)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

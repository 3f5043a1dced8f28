"""Build dist/bicorseg_qgis.zip, the file uploaded to plugins.qgis.org.

The zip holds ONE top folder, ``bicorseg_qgis/``: the plugin code, a real copy of the engine (in the repository
``bicorseg_qgis/engine`` is a symlink to ``../engine``), the resources (icons, styles, the default model if present),
``metadata.txt`` and ``LICENSE``. Caches, tests and the training package never go in, and the zip must stay under the
repository's 25 MB limit. Entries are written in sorted order with a fixed timestamp so that builds are reproducible.

Usage: python scripts/package_plugin.py [--output dist/bicorseg_qgis.zip]
"""

from __future__ import annotations

import argparse
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
#: The int8 variant of the default model stays in the repository (engine command line, MODEL = its path): with the
#: float32 default beside it the zip is 24.8 MB, at the edge of the plugin repository's 25 MB limit, and no
#: plugin option picks it.
SKIP_RESOURCE_SUFFIXES = (".int8.onnx",)


def iter_files(root: Path, skip_dirs: set[str] = SKIP_DIRS) -> Iterator[Path]:
    """Files below ``root`` (symlinks followed), sorted, without caches or excluded folders."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in skip_dirs for part in relative.parts[:-1]) or path.name in skip_dirs:
            continue
        if path.is_file() and path.suffix not in SKIP_SUFFIXES:
            yield path


def plugin_entries(repo: Path = REPO) -> list[tuple[str, Path]]:
    """(name inside the zip, source file) for every file of the plugin package, in order."""
    package = repo / PLUGIN
    entries: list[tuple[str, Path]] = []
    for path in iter_files(package, SKIP_DIRS | {"engine", "resources"}):
        entries.append((f"{PLUGIN}/{path.relative_to(package).as_posix()}", path))
    for path in iter_files(repo / "engine"):
        entries.append((f"{PLUGIN}/engine/{path.relative_to(repo / 'engine').as_posix()}", path))
    for path in iter_files(repo / "resources", SKIP_DIRS | SKIP_RESOURCE_DIRS):
        if path.name.endswith(SKIP_RESOURCE_SUFFIXES):
            continue
        entries.append((f"{PLUGIN}/resources/{path.relative_to(repo / 'resources').as_posix()}", path))
    for name in ("metadata.txt", "LICENSE"):
        source = repo / name
        if not source.is_file():
            raise SystemExit(f"error: {source} is missing; the plugin repository requires it in the zip.")
        entries.append((f"{PLUGIN}/{name}", source))
    return entries


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
            archive.writestr(info, source.read_bytes())
    size = partial.stat().st_size
    if size > MAX_ZIP_BYTES:
        partial.unlink()
        raise SystemExit(f"error: the zip is {size / 1e6:.1f} MB; plugins.qgis.org accepts at most 25 MB.")
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

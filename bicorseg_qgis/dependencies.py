"""The plugin's private dependency folder: requirement sets, location, interpreter, pip commands, swap, shadow check.

No Qt and no QGIS here, so every step is unit-testable; ``algorithms/install_dependencies.py`` and the message bar in
``plugin.py`` only call into this module.

How an install works (:func:`install`):

1. :func:`plan_install` turns a profile (``cpu``, ``cuda``, ``training``) into pinned requirements plus constraints
   that hold the packages QGIS owns (numpy, GDAL's ``osgeo``) at the versions QGIS already has.
2. pip resolves the set with ``--dry-run --ignore-installed --report`` (as for an empty folder, with the constraints),
   then installs exactly the resolved ``name==version`` list with ``--no-deps`` into a *staging* folder beside the
   real one, leaving out what QGIS owns: a wheel's dependencies can never shadow QGIS's numpy or GDAL bindings.
3. :func:`shadowing_entries` checks the staging folder; anything QGIS owns found there fails the install.
4. A stamp (requirements, constraints, Python version) is written, and :func:`swap_into_place` moves the staging
   folder to the real place. A failure at any step removes the staging folder and leaves the previous one working.

pip runs with the user's normal configuration (config files and ``PIP_*`` variables; never ``--isolated``), and
``pip install --target`` is not refused by PEP 668 ("externally-managed-environment") on Debian and Ubuntu.
The ``# nosec`` marks (Bandit B404/B603) are there because subprocess runs pip, the only way to install wheels, with fixed argument lists and never a shell.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import queue
import re
import shutil
import subprocess  # nosec B404
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROFILES: tuple[str, ...] = ("cpu", "cuda", "training")

# Why each pin: rasterio 1.4.4 and onnxruntime 1.31.1 are the versions the engine's tests run with; affine 3.0.1
# breaks Affine arithmetic on Debian's Python 3.11.2 (every rasterio transform raises TypeError); torch==2.13.0 is
# the CPU build the project tests (a bare "torch" on Linux pulls a multi-GB CUDA build from PyPI); matplotlib 3.10
# is the last release that accepts numpy 1.24 (Debian 12's QGIS).
_RASTER = ("rasterio==1.4.4", "affine==2.4.0")
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "cpu": ("onnxruntime==1.31.1", *_RASTER),
    "cuda": ("onnxruntime-gpu==1.31.1", *_RASTER),
    "training": (
        "onnxruntime==1.31.1", *_RASTER, "torch==2.13.0", "onnx==1.23.2", "PyYAML==6.0.3", "tqdm==4.70.1",
        "Pillow==13.0.0", "matplotlib==3.10.9", "tensorboard==2.21.0",
    ),
}  # fmt: skip

#: Import names whose modules QGIS itself is built against (numpy, GDAL, Qt): a copy in the folder would shadow them.
PROTECTED_MODULES: tuple[str, ...] = ("numpy", "osgeo", "PyQt5", "PyQt6", "sip", "qgis")
#: The same as pip distribution names (normalised), and the import name QGIS's version is read from.
PROTECTED_DISTRIBUTIONS: dict[str, str] = {"numpy": "numpy", "gdal": "osgeo", "pyqt5": "PyQt5", "pyqt6": "PyQt6"}
#: Used when QGIS's interpreter has no numpy at all: QGIS's bindings need numpy 1.x.
NUMPY_FALLBACK = "numpy<2"

FOLDER_NAME = "bicorseg-qgis"
STAMP_NAME = ".bicorseg-dependencies.json"
#: Import names the plugin needs: all of the first, at least one of the second.
NEEDED_MODULES: tuple[tuple[str, ...], tuple[str, ...]] = (("numpy", "rasterio"), ("onnxruntime", "torch"))


class DependencyInstallError(RuntimeError):
    """An install could not finish; the message names the problem and the fix. The previous folder is untouched."""


class PipUnavailableError(DependencyInstallError):
    """No Python interpreter with pip was found for the Python that QGIS runs."""


class InstallCanceledError(DependencyInstallError):
    """The user canceled; the previous folder is untouched."""


@dataclass(frozen=True)
class InstallPlan:
    """What one install puts into the folder.

    Attributes:
        profile: ``cpu``, ``cuda`` or ``training``.
        requirements: pip requirement strings to resolve.
        constraints: pins for packages QGIS owns (``numpy==1.24.2``), applied while resolving.
        excluded: normalised distribution names never installed (QGIS has them).
        python: ``major.minor`` of the interpreter the packages are for.
    """

    profile: str
    requirements: tuple[str, ...]
    constraints: tuple[str, ...]
    excluded: tuple[str, ...]
    python: str

    def stamp(self) -> dict[str, object]:
        """The JSON written beside the packages; an install with an equal stamp is a no-op."""
        return {
            "profile": self.profile,
            "requirements": list(self.requirements),
            "constraints": list(self.constraints),
            "python": self.python,
        }


def dependencies_folder(profile_dir: Path) -> Path:
    """``<QGIS profile>/python/dependencies/bicorseg-qgis``: private to this plugin (uninstall = delete it).

    The hyphen keeps the folder itself from being importable when another tool (qpip) puts
    ``<profile>/python/dependencies`` on ``sys.path``.
    """
    return Path(profile_dir) / "python" / "dependencies" / FOLDER_NAME


def host_versions(modules: Mapping[str, str] = PROTECTED_DISTRIBUTIONS) -> dict[str, str | None]:
    """Version of each protected distribution in the running interpreter (``None`` when it does not import)."""
    versions: dict[str, str | None] = {}
    for distribution, module in modules.items():
        try:
            imported = importlib.import_module(module)
        except ImportError:
            versions[distribution] = None
            continue
        version = getattr(imported, "__version__", None)
        if version is None and module.startswith("PyQt"):
            version = getattr(importlib.import_module(f"{module}.QtCore"), "PYQT_VERSION_STR", None)
        versions[distribution] = str(version) if version else None
    return versions


def plan_install(profile: str, host: Mapping[str, str | None], python: str | None = None) -> InstallPlan:
    """The plan for ``profile`` given the protected versions QGIS already has (see :func:`host_versions`).

    Raises:
        ValueError: ``profile`` is not one of :data:`PROFILES`.
    """
    if profile not in REQUIREMENTS:
        raise ValueError(f"Unknown dependency profile {profile!r}; choose one of {', '.join(PROFILES)}.")
    requirements = list(REQUIREMENTS[profile])
    constraints = sorted(f"{name}=={version}" for name, version in host.items() if version)
    excluded = sorted(name for name, version in host.items() if version)
    if not host.get("numpy"):
        requirements.append(NUMPY_FALLBACK)
    return InstallPlan(
        profile=profile,
        requirements=tuple(requirements),
        constraints=tuple(constraints),
        excluded=tuple(excluded),
        python=python or f"{sys.version_info.major}.{sys.version_info.minor}",
    )


def read_stamp(folder: Path) -> dict[str, object] | None:
    """The stamp of an installed folder, or ``None`` when there is none (or it is unreadable)."""
    try:
        stamp = json.loads((Path(folder) / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def is_satisfied(folder: Path, plan: InstallPlan) -> bool:
    """True when ``folder`` already holds exactly this plan for this Python (re-running is then a no-op)."""
    stamp = read_stamp(folder)
    expected = plan.stamp()
    return stamp is not None and {key: stamp.get(key) for key in expected} == expected


def missing_modules(needed: tuple[tuple[str, ...], tuple[str, ...]] = NEEDED_MODULES) -> list[str]:
    """Needed import names that are not found (cheap: ``find_spec`` only, nothing heavy is imported)."""
    required, any_of = needed
    missing = [name for name in required if importlib.util.find_spec(name) is None]
    if any_of and all(importlib.util.find_spec(name) is None for name in any_of):
        missing.append(" or ".join(any_of))
    return missing


def activate(folder: Path, python: str | None = None) -> bool:
    """Put ``folder`` first on ``sys.path`` when it holds an install for this Python; True when it is on the path.

    First, so that the pinned versions win over older copies elsewhere; what QGIS owns is never in the folder.
    """
    stamp = read_stamp(folder)
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    if stamp is None or stamp.get("python") != python:
        return False
    entry = str(Path(folder))
    if entry not in sys.path:
        sys.path.insert(0, entry)
        importlib.invalidate_caches()
    return True


def python_candidates(
    executable: str, base_executable: str | None, exec_prefix: str, version: tuple[int, int], system: str
) -> list[Path]:
    """Where the Python interpreter may be, best first.

    Inside QGIS ``sys.executable`` can be the ``qgis`` binary itself (Linux desktop, macOS app) or ``qgis-bin.exe``
    (Windows), so only files named ``python*`` count, then the interpreters beside ``exec_prefix``
    (``bin/python3.X`` on Linux and in QGIS.app on macOS; ``python.exe`` / ``python3.exe`` in OSGeo4W's
    ``apps/Python3X``).
    """
    major, minor = version
    prefix = Path(exec_prefix)
    candidates = [Path(p) for p in (executable, base_executable) if p and Path(p).name.lower().startswith("python")]
    if system == "Windows":
        candidates += [prefix / "python.exe", prefix / "python3.exe", prefix / "Scripts" / "python.exe"]
    else:
        candidates += [prefix / "bin" / f"python{major}.{minor}", prefix / "bin" / f"python{major}"]
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def pip_missing_advice(system: str) -> str:
    """How to get pip for the Python QGIS runs, per platform."""
    if system == "Windows":
        return "run the OSGeo4W installer (Advanced install) and add the 'python3-pip' package"
    if system == "Darwin":
        return "run '<QGIS.app>/Contents/MacOS/bin/python3 -m ensurepip --user' in a Terminal"
    return "install it with 'sudo apt install python3-pip' (Debian/Ubuntu) or your distribution's python3-pip"


def find_python(
    executable: str = sys.executable,
    base_executable: str | None = getattr(sys, "_base_executable", None),
    exec_prefix: str = sys.exec_prefix,
    version: tuple[int, int] = (sys.version_info.major, sys.version_info.minor),
    system: str | None = None,
) -> tuple[Path, str]:
    """The interpreter of QGIS's Python that has pip, and pip's version line.

    Raises:
        PipUnavailableError: no candidate exists, none is this Python version, or pip is missing for it.
    """
    system = system or platform.system()
    tried: list[str] = []
    for candidate in python_candidates(executable, base_executable, exec_prefix, version, system):
        if not candidate.is_file():
            continue
        proc = subprocess.run(  # nosec B603
            [str(candidate), "-m", "pip", "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        line = (proc.stdout or proc.stderr).strip().splitlines()[-1:] or [""]
        match = re.search(r"\(python (\d+)\.(\d+)\)", line[0])
        if proc.returncode == 0 and match and (int(match[1]), int(match[2])) == version:
            return candidate, line[0]
        tried.append(f"{candidate}: {line[0] or 'exit code ' + str(proc.returncode)}")
    python = f"Python {version[0]}.{version[1]}"
    detail = "; ".join(tried) if tried else f"no python executable found beside {executable} or in {exec_prefix}"
    raise PipUnavailableError(
        f"pip is not available for the {python} that QGIS runs ({detail}). To fix it, "
        f"{pip_missing_advice(system)}, then run Install dependencies again."
    )


def resolve_command(python: Path, plan: InstallPlan, staging: Path, constraints: Path, report: Path) -> list[str]:
    """Command: pip resolving the plan as for an empty folder, writing the resolution to ``report`` (nothing installed)."""
    return [
        str(python), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report),
        "--target", str(staging), "--constraint", str(constraints), "--progress-bar", "off",
        *plan.requirements,
    ]  # fmt: skip


def install_command(python: Path, pins: Sequence[str], staging: Path) -> list[str]:
    """Command: pip installing exactly ``pins`` (no dependency resolution) into ``staging``."""
    return [
        str(python), "-m", "pip", "install", "--no-deps", "--target", str(staging), "--progress-bar", "off",
        "--no-warn-script-location", *pins,
    ]  # fmt: skip


def normalise(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_from_report(report: Mapping[str, object], excluded: Sequence[str]) -> list[str]:
    """``name==version`` for every distribution pip would install, without the ``excluded`` ones.

    Raises:
        DependencyInstallError: the report is not pip's installation report.
    """
    items = report.get("install")
    if not isinstance(items, list):
        raise DependencyInstallError("pip's --report has no 'install' list; upgrade pip (22.2 or newer is needed).")
    skip = {normalise(name) for name in excluded}
    pins = []
    for item in items:
        metadata = item["metadata"]
        if normalise(metadata["name"]) not in skip:
            pins.append(f"{metadata['name']}=={metadata['version']}")
    return sorted(pins, key=str.lower)


def shadowing_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` that would shadow a module QGIS owns (packages, modules or their dist-info)."""
    protected = {name.lower() for name in PROTECTED_MODULES} | set(PROTECTED_DISTRIBUTIONS)
    found = []
    for entry in sorted(Path(folder).iterdir()):
        stem = entry.name.split(".")[0].lower()
        if entry.suffix in (".dist-info", ".egg-info"):  # "{name}-{version}.dist-info", name without hyphens
            stem = normalise(entry.name.split("-")[0])
        if stem in protected or (stem.startswith("_gdal") or stem == "gdal"):
            found.append(entry.name)
    return found


def swap_into_place(staging: Path, folder: Path) -> None:
    """Make ``staging`` the folder: the previous folder is moved aside, replaced, then removed.

    If the final rename fails the previous folder is moved back, so a working install is never lost.
    """
    folder = Path(folder)
    previous = None
    if folder.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{folder.name}.previous-", dir=folder.parent))
        previous.rmdir()
        folder.replace(previous)
    try:
        Path(staging).replace(folder)
    except OSError:
        if previous is not None:
            previous.replace(folder)
        raise
    if previous is not None:
        # On Windows a DLL loaded from the previous folder cannot be deleted until QGIS exits; it is only clutter.
        shutil.rmtree(previous, ignore_errors=True)


def run_streaming(
    command: Sequence[str], on_line: Callable[[str], None], is_canceled: Callable[[], bool], poll_s: float = 0.2
) -> tuple[int, list[str]]:
    """Run ``command``, passing each output line (stdout and stderr) to ``on_line`` as it comes; honour cancel.

    Returns:
        The exit code and the output lines.

    Raises:
        InstallCanceledError: ``is_canceled()`` became true; the process was terminated.
    """
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window flashing up on Windows
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
    with subprocess.Popen(  # nosec B603
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, encoding="utf-8", errors="replace", bufsize=1, env=env, creationflags=flags,
    ) as process:  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process, lines), daemon=True)
        reader.start()
        output: list[str] = []
        while True:
            if is_canceled():
                process.terminate()
                process.wait(timeout=30)
                raise InstallCanceledError("Install canceled; the previous dependency folder is unchanged.")
            try:
                line = lines.get(timeout=poll_s)
            except queue.Empty:
                continue
            if line is None:
                break
            output.append(line)
            on_line(line)
        return process.wait(), output


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    for line in process.stdout or ():
        lines.put(line.rstrip("\n"))
    lines.put(None)


@dataclass(frozen=True)
class InstallResult:
    """Outcome of :func:`install`: the folder and the ``name==version`` pins installed into it."""

    folder: Path
    pins: tuple[str, ...]


def install(
    plan: InstallPlan,
    folder: Path,
    python: Path,
    on_line: Callable[[str], None],
    is_canceled: Callable[[], bool] = lambda: False,
) -> InstallResult:
    """Install ``plan`` into ``folder`` with ``python``'s pip (see the module docstring for the steps).

    Always runs pip: callers skip the call when :func:`is_satisfied` says the folder already holds the plan.

    Raises:
        DependencyInstallError: pip failed, or a package QGIS owns landed in the folder; ``folder`` is unchanged.
        InstallCanceledError: canceled; ``folder`` is unchanged.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="bicorseg-pip-") as work:
            constraints = Path(work) / "constraints.txt"
            constraints.write_text("".join(f"{c}\n" for c in plan.constraints), encoding="utf-8")
            report = Path(work) / "report.json"
            on_line(f"Resolving {' '.join(plan.requirements)} against QGIS's {', '.join(plan.constraints) or '-'}")
            _check(run_streaming(resolve_command(python, plan, staging, constraints, report), on_line, is_canceled))
            pins = pins_from_report(json.loads(report.read_text(encoding="utf-8")), plan.excluded)
        on_line(f"Installing {' '.join(pins)}")
        _check(run_streaming(install_command(python, pins, staging), on_line, is_canceled))
        shadows = shadowing_entries(staging)
        if shadows:
            raise DependencyInstallError(
                f"The install would shadow packages QGIS is built against ({', '.join(shadows)}); nothing was "
                "changed. Report this with the output of BiCoR-Seg > Diagnostics."
            )
        stamp = dict(plan.stamp(), pins=pins)
        (staging / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return InstallResult(folder, pins=tuple(pins))


def _check(result: tuple[int, list[str]]) -> None:
    code, output = result
    if code != 0:
        tail = "\n".join(output[-15:])
        raise DependencyInstallError(
            f"pip failed (exit code {code}); the previous dependency folder is unchanged. Check the network or "
            f"your pip configuration (proxy, index-url), then run Install dependencies again. pip said:\n{tail}"
        )

"""Device selection (``auto`` / ``cpu`` / ``cuda``) with a reason for every choice, and :func:`diagnose`.

Every "no" carries a reason a user can act on: the QGIS diagnostics algorithm and ``python -m engine diagnose``
show these strings as they are.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import BackendUnavailableError
from .contract import DeviceName
from .threads import physical_core_count

#: What to install, per backend library, into the Python that runs the engine (QGIS's, for the plugin).
INSTALL_HINTS: dict[str, str] = {
    "onnxruntime": "pip install onnxruntime (onnxruntime-gpu for CUDA) into the Python that runs QGIS",
    "torch": "pip install torch==2.13.0 into the Python that runs QGIS",
}


@dataclass(frozen=True)
class DeviceChoice:
    """The device a backend runs on, and why.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        reason: Human-readable explanation (why CUDA was or was not used).
    """

    device: DeviceName
    reason: str


def import_backend_library(name: str) -> ModuleType:
    """Import ``torch`` or ``onnxruntime``, or raise :class:`BackendUnavailableError` saying what to install."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a broken install raises OSError/RuntimeError too, not only ImportError
        raise BackendUnavailableError(
            f"{name} is not usable ({type(exc).__name__}: {exc}); {INSTALL_HINTS[name]}, or choose the other BACKEND."
        ) from exc


def torch_cuda_status(torch: Any) -> tuple[bool, str]:
    """Whether torch can run on CUDA, with the reason (a tiny operation is run to make sure)."""
    if getattr(torch.version, "cuda", None) is None and getattr(torch.version, "hip", None) is None:
        return False, (
            f"torch {torch.__version__} is built without CUDA (CPU-only wheel); install a CUDA build of PyTorch "
            "for GPU inference"
        )
    if not torch.cuda.is_available():
        return False, (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device: no NVIDIA driver, a driver "
            "too old for this build, or CUDA_VISIBLE_DEVICES hides the GPU"
        )
    try:
        torch.ones(4, device="cuda").add_(1.0).sum().item()
    except Exception as exc:  # noqa: BLE001  # driver/runtime mismatches surface as RuntimeError with CUDA's own text
        return False, f"a test operation on CUDA failed ({exc}); update the NVIDIA driver or reinstall torch"
    return True, f"CUDA device 0: {torch.cuda.get_device_name(0)}"


def onnxruntime_cuda_status(ort: Any) -> tuple[bool, str]:
    """Whether onnxruntime offers the CUDA execution provider, with the reason."""
    providers = list(ort.get_available_providers())
    if "CUDAExecutionProvider" not in providers:
        return False, (
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {', '.join(providers)}); "
            "install onnxruntime-gpu for GPU inference"
        )
    return True, "onnxruntime offers the CUDAExecutionProvider"


def choose_device(requested: str, cuda_usable: bool, cuda_reason: str, backend: str) -> DeviceChoice:
    """Resolve ``auto`` / ``cpu`` / ``cuda`` for one backend.

    Raises:
        BackendUnavailableError: If ``cuda`` is requested but not usable; the message says why and what to do.
    """
    if requested == "cpu":
        return DeviceChoice("cpu", "CPU requested")
    if cuda_usable:
        prefix = "CUDA requested" if requested == "cuda" else "CUDA usable"
        return DeviceChoice("cuda", f"{prefix}: {cuda_reason}")
    if requested == "cuda":
        raise BackendUnavailableError(
            f"DEVICE cuda was requested but CUDA is not usable with {backend}: {cuda_reason}. "
            "Choose DEVICE auto or cpu, or fix the CUDA installation."
        )
    return DeviceChoice("cpu", f"CUDA not available: {cuda_reason}")


def diagnose() -> dict[str, Any]:
    """Versions, backends and devices, and why a device is not usable. Never raises.

    Returns:
        A JSON-ready dict: ``python``, ``platform``, ``numpy``, ``rasterio``, ``gdal`` (versions, None when missing,
        with ``*_import_error``), ``cpu`` (core counts), ``onnxruntime`` and ``torch`` (version, import error,
        providers / CUDA build, CUDA devices, ``cuda_usable`` and ``cuda_reason``), ``devices`` (``cpu`` and
        ``cuda``: ``usable`` + ``reason``) and ``default_model`` (path, exists).
    """
    from .. import __version__ as engine_version
    from ..default_model import DEFAULT_MODEL_PATH

    info: dict[str, Any] = {
        "engine": engine_version,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu": {"logical_cpus": os.cpu_count(), "physical_cores": physical_core_count()},
    }
    for name in ("numpy", "rasterio"):
        module, error = _try_import(name)
        info[name] = getattr(module, "__version__", None)
        info[f"{name}_import_error"] = error
    rasterio_module, _ = _try_import("rasterio")
    info["gdal"] = getattr(rasterio_module, "__gdal_version__", None)
    info["onnxruntime"] = _onnxruntime_info()
    info["torch"] = _torch_info()
    cuda_reasons = [f"{lib}: {info[lib]['cuda_reason']}" for lib in ("onnxruntime", "torch")]
    info["devices"] = {
        "cpu": {"usable": True, "reason": "always available"},
        "cuda": {
            "usable": bool(info["onnxruntime"]["cuda_usable"] or info["torch"]["cuda_usable"]),
            "reason": "; ".join(cuda_reasons),
        },
    }
    info["default_model"] = {"path": str(DEFAULT_MODEL_PATH), "exists": DEFAULT_MODEL_PATH.is_file()}
    return info


def _try_import(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # noqa: BLE001  # report any failure; diagnostics must not raise
        return None, f"{type(exc).__name__}: {exc}"


def _onnxruntime_info() -> dict[str, Any]:
    ort, error = _try_import("onnxruntime")
    if ort is None:
        return {
            "version": None, "import_error": error, "providers": [], "cuda_usable": False,
            "cuda_reason": f"onnxruntime is not installed ({error}); {INSTALL_HINTS['onnxruntime']}",
        }  # fmt: skip
    usable, reason = onnxruntime_cuda_status(ort)
    return {
        "version": ort.__version__, "import_error": None, "providers": list(ort.get_available_providers()),
        "device": ort.get_device(), "cuda_usable": usable, "cuda_reason": reason,
    }  # fmt: skip


def _torch_info() -> dict[str, Any]:
    torch, error = _try_import("torch")
    if torch is None:
        return {
            "version": None, "import_error": error, "cuda_build": None, "cuda_devices": [], "cuda_usable": False,
            "cuda_reason": f"torch is not installed ({error}); {INSTALL_HINTS['torch']}",
        }  # fmt: skip
    try:
        usable, reason = torch_cuda_status(torch)
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if usable else []
    except Exception as exc:  # noqa: BLE001  # diagnostics must not raise
        usable, reason, devices = False, f"checking CUDA failed: {exc}", []
    return {
        "version": torch.__version__, "import_error": None, "cuda_build": torch.version.cuda,
        "cuda_devices": devices, "cuda_usable": usable, "cuda_reason": reason,
        "num_threads": torch.get_num_threads(),
    }  # fmt: skip

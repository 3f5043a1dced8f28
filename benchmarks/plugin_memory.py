"""Plugin memory: peak RSS of the same run on the command line and in QGIS (processing.run), side by side.

Each size runs three ways, each in a fresh subprocess (the raster and model are made in another one first):

* ``cli``: ``python -m engine segment`` (``engine.cli.main``; GDAL's block cache capped at 32 MB through
  ``GDAL_CACHEMAX`` before GDAL starts);
* ``plugin``: ``processing.run("bicorseg:segmentlandcover")`` in a headless QGIS with the provider registered, as
  the plugin runs now (GDAL's cache bounded for the run by ``engine.bounded_gdal_cache``);
* ``plugin_unbounded``: the same with that bound switched off, i.e. the plugin as it was (GDAL's cache left at its
  default, 5 % of RAM).

Each child reports ``ru_maxrss`` (the peak) and its RSS just before the run (after imports / QGIS start-up), so
the growth during the run can be told from the interpreter's baseline. The model is a 1x1 convolution (6 classes,
ONNX Runtime, default threads in both front ends), so reading, stitching and writing dominate. Classes and
heatmaps are written.

Usage::

    python -m benchmarks.plugin_memory                          # 2000, 6000, 12000 px squares
    python -m benchmarks.plugin_memory --sizes 1000 2000        # quicker
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.synthetic import export_pointwise_model, machine_info, save_results, write_synthetic_raster

_REPO_ROOT = Path(__file__).resolve().parent.parent
_QGIS_PLUGINS = "/usr/share/qgis/python/plugins"
MODES = ("cli", "plugin", "plugin_unbounded")


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _gdal_cache_mb() -> float:
    from rasterio.env import get_gdal_config

    return int(get_gdal_config("GDAL_CACHEMAX")) / 2**20


def _run_cli(folder: Path, tile: int, overlap: int) -> tuple[float, float]:
    from engine.cli import main as cli_main

    argv = [
        "segment", str(folder / "input.tif"), "-o", str(folder / "cli" / "classes.tif"),
        "--heatmaps", str(folder / "cli" / "heat.tif"), "--model", str(folder / "pointwise.onnx"),
        "--backend", "onnxruntime", "--device", "cpu", "--no-resample", "-q",
        "--tile-size", str(tile), "--overlap", str(overlap),
    ]  # fmt: skip
    before = _rss_now_mb()
    code = cli_main(argv, stdout=io.StringIO(), stderr=io.StringIO())
    if code != 0:
        raise RuntimeError(f"segmentation failed with exit code {code}")
    return before, _gdal_cache_mb()


def _run_plugin(folder: Path, tile: int, overlap: int, bounded: bool) -> tuple[float, float]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject

    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append(_QGIS_PLUGINS)
    from processing.core.Processing import Processing

    Processing.initialize()
    from bicorseg_qgis.provider import BiCoRSegProvider

    provider = BiCoRSegProvider()  # kept referenced: the registry holds only a C++ pointer
    QgsApplication.processingRegistry().addProvider(provider)
    if not bounded:  # the plugin as it was: GDAL's cache left at its default for the run
        from contextlib import nullcontext

        import engine.raster.gdal_cache

        engine.raster.gdal_cache.bounded_gdal_cache = lambda *args, **kwargs: nullcontext()  # type: ignore[assignment]
    import processing

    out = folder / ("plugin" if bounded else "plugin_unbounded")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    cache: list[float] = []
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda _: cache.append(_gdal_cache_mb()) if not cache else None)
    parameters = {
        "INPUT": str(folder / "input.tif"), "MODEL": str(folder / "pointwise.onnx"), "DEVICE": "cpu",
        "BACKEND": "onnxruntime", "TILE_SIZE": tile, "OVERLAP": overlap,
        "OUTPUT": str(out / "classes.tif"), "HEATMAPS": str(out / "heat.tif"),
    }  # fmt: skip
    if "RESAMPLE" in [p.name() for p in QgsApplication.processingRegistry().algorithmById(
            "bicorseg:segmentlandcover").parameterDefinitions()]:  # fmt: skip
        parameters["RESAMPLE"] = False
    before = _rss_now_mb()
    processing.run("bicorseg:segmentlandcover", parameters, feedback=feedback, context=context)
    return before, cache[0] if cache else float("nan")


def _child_run(mode: str, folder: Path, size: int, tile: int, overlap: int) -> dict[str, Any]:
    """Inside the subprocess: one run, its peak RSS and its RSS before the run.

    The engine's libraries are imported first in both front ends, so "before the run" holds them in both and the
    growth is the run's own memory (QGIS may have numpy loaded already; the command line would load it mid-run).
    """
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import rasterio  # noqa: F401

    import engine.inference.pipeline  # noqa: F401

    started = time.perf_counter()
    if mode == "cli":
        before, cache_mb = _run_cli(folder, tile, overlap)
    else:
        before, cache_mb = _run_plugin(folder, tile, overlap, bounded=mode == "plugin")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    return {
        "mode": mode,
        "size_px": size,
        "peak_rss_mb": round(peak, 1),
        "rss_before_run_mb": round(before, 1),
        "growth_during_run_mb": round(peak - before, 1),
        "gdal_cache_max_during_run_mb": round(cache_mb, 1),
        "seconds": round(seconds, 2),
    }


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(_REPO_ROOT), OMP_NUM_THREADS="1", QT_QPA_PLATFORM="offscreen")
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.plugin_memory", *args],
        check=True, capture_output=True, text=True, env=env, cwd=_REPO_ROOT,
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench_plugin_memory_", dir=args.tmp) as tmp:
            tiling = ["--tile", str(args.tile), "--overlap", str(args.overlap)]
            _python("--make-raster", str(size), "--folder", tmp, *tiling)
            for mode in MODES:
                done = _python("--child", mode, "--size", str(size), "--folder", tmp, *tiling)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    table = []
    for size in args.sizes:
        by_mode = {row["mode"]: row for row in rows if row["size_px"] == size}
        cli, plugin, unbounded = (by_mode[m]["peak_rss_mb"] for m in MODES)
        grown = {m: by_mode[m]["growth_during_run_mb"] for m in MODES}
        table.append({
            "size_px": size, "cli_peak_mb": cli, "plugin_peak_mb": plugin, "plugin_unbounded_peak_mb": unbounded,
            "plugin_minus_cli_mb": round(plugin - cli, 1), "unbounded_minus_cli_mb": round(unbounded - cli, 1),
            "qgis_baseline_minus_cli_baseline_mb": round(
                by_mode["plugin"]["rss_before_run_mb"] - by_mode["cli"]["rss_before_run_mb"], 1),
            "plugin_growth_minus_cli_growth_mb": round(grown["plugin"] - grown["cli"], 1),
            "unbounded_growth_minus_cli_growth_mb": round(grown["plugin_unbounded"] - grown["cli"], 1),
        })  # fmt: skip
    return {
        "benchmark": "plugin_memory",
        "command": "python -m benchmarks.plugin_memory " + " ".join(args.argv),
        "machine": machine_info(),
        "setup": {
            "model": "pointwise 1x1 conv, 6 classes (ONNX Runtime, default threads), classes + heatmaps",
            "tile_px": args.tile,
            "overlap_px": args.overlap,
            "modes": list(MODES),
        },
        "runs": rows,
        "table": table,
        "targets": {
            **{f"plugin_peak_within_150_mb_of_cli_at_{r['size_px']}": r["plugin_minus_cli_mb"] <= 150 for r in table},
            **{
                f"plugin_growth_within_150_mb_of_cli_at_{r['size_px']}": r["plugin_growth_minus_cli_growth_mb"] <= 150
                for r in table
            },
        },
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 6000, 12000], help="square raster edges")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--tmp", default=None, help="folder for the temporary rasters (~1.5 GB at 12000)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--make-raster", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.make_raster:
        write_synthetic_raster(args.folder / "input.tif", args.make_raster)
        export_pointwise_model(args.folder, args.tile, args.overlap)
        return
    if args.child:
        print(json.dumps(_child_run(args.child, args.folder, args.size, args.tile, args.overlap)))
        return
    save_results("plugin_memory", run(args), args.out)


if __name__ == "__main__":
    main()

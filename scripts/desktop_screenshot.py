"""What a user sees: the real QGIS desktop under Xvfb, the plugin installed from its zip into a fresh profile.

Steps, all inside the real ``qgis`` binary (a start-up script passed with ``--code``):

1. record the message bar QGIS shows on start-up (packages missing in a fresh profile: an Install button);
2. run ``bicorseg:installdependencies`` (PROFILE=cpu, the real pip) in that same session (no restart follows);
3. run Segment land cover on ``resources/sample/dubai_sample.tif`` with MODEL empty (the embedded default) and
   HEATMAPS, loading the results as the toolbox does (post-processors: paletted class layer, pseudocolour heatmaps,
   one group);
4. save a screenshot of the main window (map, layer tree) and a JSON report of the layers' renderers, the layer
   tree and the message bar, then quit.

Usage: python scripts/desktop_screenshot.py [--output docs/plugin-desktop.png] [--report desktop.json]
Needs ``xvfb-run`` (Debian package ``xvfb``, installed by scripts/setup.sh) and network access to the package
registry (the installer runs pip).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "resources" / "sample" / "dubai_sample.tif"
PASSED_THROUGH = ("HOME", "LANG", "USER", "LOGNAME", "XDG_CONFIG_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR")

# Runs inside QGIS (``qgis --code``): iface is QGIS's own. Paths arrive through the environment.
STARTUP = r"""
import json, os, traceback
from pathlib import Path
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsLayerTreeGroup, QgsLayerTreeLayer
from qgis.PyQt.QtCore import QTimer, QSize
from qgis.PyQt.QtWidgets import QPushButton
from qgis.utils import iface

REPORT = Path(os.environ["BICORSEG_DESKTOP_REPORT"])
SHOT = Path(os.environ["BICORSEG_DESKTOP_PNG"])
OUT = Path(os.environ["BICORSEG_DESKTOP_OUT"])
SAMPLE = os.environ["BICORSEG_DESKTOP_SAMPLE"]


def message_bar():
    items = []
    for item in iface.messageBar().items():
        buttons = [b.text() for b in item.findChildren(QPushButton) if b.objectName() == "bicorsegInstallDependencies"]
        items.append({"title": item.title(), "text": item.text(), "install_buttons": buttons})
    return items


def renderer_info(layer):
    renderer = layer.renderer()
    info = {"name": layer.name(), "renderer": renderer.type(), "source": layer.source()}
    if renderer.type() == "paletted":
        info["classes"] = [{"value": c.value, "label": c.label, "color": c.color.name()} for c in renderer.classes()]
    if renderer.type() == "singlebandpseudocolor":
        info["band"] = renderer.band()
        shader = renderer.shader().rasterShaderFunction()
        info["ramp"] = [[i.value, i.color.name()] for i in shader.colorRampItemList()]
    return info


def tree(node):
    if isinstance(node, QgsLayerTreeLayer):
        return {"layer": node.name(), "visible": node.isVisible()}
    return {"group": node.name() if isinstance(node, QgsLayerTreeGroup) and node.parent() else "",
            "children": [tree(child) for child in node.children()]}


def run():
    report = {"message_bar_at_start": message_bar()}
    try:
        import processing
        install = processing.run("bicorseg:installdependencies", {"PROFILE": "cpu"})
        report["installed_folder"] = install["FOLDER"]
        iface.mainWindow().resize(QSize(1600, 1000))
        sample = QgsRasterLayer(SAMPLE, "dubai_sample")
        QgsProject.instance().addMapLayer(sample)
        result = processing.runAndLoadResults("bicorseg:segmentlandcover", {
            "INPUT": sample, "MODEL": "", "OUTPUT": str(OUT / "landcover.tif"), "HEATMAPS": str(OUT / "heatmaps.tif"),
        })
        report["outputs"] = {k: str(v) for k, v in result.items()}
        report["layers"] = [renderer_info(l) for l in QgsProject.instance().mapLayers().values()
                            if l.type() == l.RasterLayer]
        report["layer_tree"] = tree(QgsProject.instance().layerTreeRoot())
        # Display only: the bar's Install button was recorded above (the packages are installed now), and the
        # heatmap legends are folded so the whole group fits in the layer panel.
        iface.messageBar().clearWidgets()
        for node in QgsProject.instance().layerTreeRoot().findLayers():
            node.setExpanded(node.name().startswith("Land cover"))
        iface.mapCanvas().setExtent(sample.extent())
        iface.mapCanvas().refreshAllLayers()
        QTimer.singleShot(3000, lambda: finish(report))
    except Exception:
        report["error"] = traceback.format_exc()
        finish(report)


def finish(report):
    try:
        iface.mapCanvas().waitWhileRendering()
        report["screenshot_saved"] = iface.mainWindow().grab().save(str(SHOT))
    except Exception:
        report.setdefault("error", traceback.format_exc())
    REPORT.write_text(json.dumps(report, indent=2))
    QgsProject.instance().setDirty(False)
    os._exit(0 if "error" not in report else 1)  # no "save project?" prompt, no settings written


QTimer.singleShot(2000, run)
"""


def _build_zip(target: Path) -> Path:
    spec = importlib.util.spec_from_file_location("package_plugin", REPO / "scripts" / "package_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_zip(target)


def prepare_profile(root: Path) -> Path:
    """A fresh profiles folder with the plugin zip installed and enabled; returns the profiles path."""
    plugins = root / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(_build_zip(root / "bicorseg_qgis.zip")) as archive:
        archive.extractall(plugins)
    settings = root / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    settings.parent.mkdir(parents=True)
    settings.write_text(
        "[PythonPlugins]\nbicorseg_qgis=true\n[qgis]\ncheckVersion=false\nshowTips=false\n"
        "[core]\nNewsFeed\\httpsfeedqgisorg\\disabled=true\n",
        encoding="utf-8",
    )
    return root


def run_desktop(output: Path, report: Path, timeout_s: int = 300) -> dict:
    """Start QGIS under Xvfb in a fresh profile, run the steps, return the report (raises on failure)."""
    if shutil.which("xvfb-run") is None:
        raise SystemExit("error: xvfb-run is missing; install the Debian package xvfb (scripts/setup.sh does).")
    with tempfile.TemporaryDirectory(prefix="bicorseg-desktop-") as tmp:
        root = prepare_profile(Path(tmp) / "config")
        out = Path(tmp) / "out"
        out.mkdir()
        startup = Path(tmp) / "startup.py"
        startup.write_text(STARTUP, encoding="utf-8")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "QT_QPA_PLATFORM": "xcb", "OMP_NUM_THREADS": "1"}
        env.update({k: v for k, v in os.environ.items() if k in PASSED_THROUGH or k.startswith("PIP_")})
        env.update(
            BICORSEG_DESKTOP_REPORT=str(report), BICORSEG_DESKTOP_PNG=str(output), BICORSEG_DESKTOP_OUT=str(out),
            BICORSEG_DESKTOP_SAMPLE=str(SAMPLE),
        )  # fmt: skip
        output.parent.mkdir(parents=True, exist_ok=True)
        report.unlink(missing_ok=True)
        command = [
            "xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "qgis", "--profiles-path", str(root),
            "--nologo", "--noversioncheck", "--code", str(startup),
        ]  # fmt: skip
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if not report.is_file():
            raise SystemExit(f"error: QGIS exited ({proc.returncode}) without a report:\n{proc.stdout}\n{proc.stderr}")
        data = json.loads(report.read_text())
        if "error" in data:
            raise SystemExit(f"error inside QGIS:\n{data['error']}")
        return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "plugin-desktop.png")
    parser.add_argument("--report", type=Path, default=Path(tempfile.gettempdir()) / "bicorseg-desktop.json")
    args = parser.parse_args(argv)
    data = run_desktop(args.output.resolve(), args.report.resolve())
    sys.stdout.write(f"{args.output} ({len(data.get('layers', []))} raster layers); report {args.report}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

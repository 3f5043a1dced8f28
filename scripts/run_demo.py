"""The main job: segment the bundled sample raster with the embedded default model through QGIS Processing.

Runs ``bicorseg:segmentlandcover`` headless exactly as a user's toolbox run would (MODEL left empty = the embedded
default model), then renders ``preview.png`` (image | land cover | building probability | legend) with QGIS's map
renderer. Run it with ``make demo``, which does the set-up first.

Usage: python scripts/run_demo.py [--input resources/sample/dubai_sample.tif] [--out demo_output]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import render_preview  # a sibling script, importable once scripts/ is on the path

logger = logging.getLogger("demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=REPO / "resources" / "sample" / "dubai_sample.tif")
    parser.add_argument("--out", type=Path, default=REPO / "demo_output")
    parser.add_argument("--model", type=Path, default=None, help="a model file instead of the embedded default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from engine.default_model import resolve_model_path
    from engine.errors import BiCoRSegError

    try:
        model = resolve_model_path(args.model)
    except BiCoRSegError as exc:
        logger.error("error: %s", exc)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    # QGIS caches statistics in a .aux.xml beside an input it opens: keep the bundled sample untouched.
    sidecar = args.input.with_name(args.input.name + ".aux.xml")
    sidecar_existed = sidecar.exists()
    app = render_preview.start_qgis()
    import processing

    parameters = {
        "INPUT": str(args.input),
        "MODEL": str(args.model) if args.model else "",
        "OUTPUT": str(args.out / "landcover.tif"),
        "HEATMAPS": str(args.out / "heatmaps.tif"),
    }
    logger.info("Segmenting %s with %s through bicorseg:segmentlandcover", args.input, model.name)
    result = processing.run("bicorseg:segmentlandcover", parameters)
    preview = render_preview.render_preview(
        args.input,
        Path(result["OUTPUT"]),
        args.out / "preview.png",
        heatmaps_path=Path(result["HEATMAPS"]),
        heatmap_class="building",
    )
    logger.info("Device %s, backend %s", result.get("DEVICE_USED"), result.get("BACKEND_USED"))
    logger.info("Classes:   %s", result["OUTPUT"])
    logger.info("Heatmaps:  %s", result["HEATMAPS"])
    if result.get("CLASS_STATISTICS"):
        logger.info("Class areas: %s\n%s", result["CLASS_STATISTICS"], Path(result["CLASS_STATISTICS"]).read_text())
    logger.info("Preview:   %s", preview)
    app.exitQgis()
    if not sidecar_existed:
        sidecar.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

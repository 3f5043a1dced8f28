"""The HBIS heatmap figure of docs/models.md: the sample, its land cover, and two classes' heatmaps layer by layer.

Segments the bundled sample with the embedded default model through the engine (as ``python -m engine segment
... --heatmaps H.tif --hbis-heatmaps HBIS.tif --hbis-layer N`` does), once per HBIS layer, and draws for each chosen
class: HBIS layer 0, HBIS layer 1 (the engine's default, the last) and the final class probability, all on the
same 0..1 scale.

Usage: python scripts/render_hbis_figure.py [--out docs/images/hbis-heatmaps.png] [--classes building road]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.colors import ListedColormap


def _read_probabilities(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        raw = dataset.read(masked=True)
        return np.ma.filled(raw.astype(np.float64) * np.asarray(dataset.scales)[:, None, None], np.nan)


def main(argv: list[str] | None = None) -> int:
    """Segment the sample once per HBIS layer and draw the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=REPO / "resources" / "sample" / "dubai_sample.tif")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "hbis-heatmaps.png")
    parser.add_argument("--classes", nargs="+", default=["building", "road"])
    args = parser.parse_args(argv)

    from engine.inference.pipeline import SegmentationRequest, segment_raster

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        layers: list[np.ndarray] = []
        for layer in (0, 1):
            request = SegmentationRequest(
                input_path=args.input, output_path=folder / f"classes{layer}.tif", heatmaps_path=folder / "heat.tif",
                hbis_heatmaps_path=folder / f"hbis{layer}.tif", hbis_layer=layer, device="cpu",
            )  # fmt: skip
            result = segment_raster(request)
            layers.append(_read_probabilities(folder / f"hbis{layer}.tif"))
        final = _read_probabilities(folder / "heat.tif")
        with rasterio.open(folder / "classes1.tif") as dataset:
            classes = dataset.read(1)
    card = result.card
    with rasterio.open(args.input) as dataset:
        image = np.moveaxis(dataset.read([1, 2, 3]), 0, -1)
    palette = ListedColormap(list(card.class_colors))

    rows = len(args.classes)
    figure, axes = plt.subplots(rows, 4, figsize=(14, 3.3 * rows), constrained_layout=True)
    for row, name in enumerate(args.classes):
        index = card.class_names.index(name)
        left = axes[row, 0]
        if row == 0:
            left.imshow(image)
            left.set_title("input (sample, 1 m)")
        else:
            left.imshow(np.ma.masked_equal(classes, 255), cmap=palette, vmin=0, vmax=card.num_classes - 1,
                        interpolation="nearest")  # fmt: skip
            left.set_title("land cover (final classes)")
        panels = ((layers[0], f"HBIS layer 0: {name}"), (layers[1], f"HBIS layer 1 (last): {name}"),
                  (final, f"final probability: {name}"))  # fmt: skip
        for column, (values, title) in enumerate(panels, start=1):
            shown = axes[row, column].imshow(values[index], cmap="viridis", vmin=0.0, vmax=1.0)
            axes[row, column].set_title(title)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.colorbar(shown, ax=axes[:, 1:], shrink=0.8, label="probability (softmax over classes)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in card.class_colors]
    figure.legend(handles, card.class_names, loc="lower left", ncol=len(handles), frameon=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    sys.stdout.write(f"{args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

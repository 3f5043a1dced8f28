"""Parameters and FLOPs of the registered models at given input sizes.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplies and convolutions, counted as 2 per
multiply-add; element-wise ops, norms and interpolation are not counted). GMACs = GFLOPs / 2, the unit many papers
(and fvcore/thop) call "FLOPs". The model runs on torch's ``meta`` device, so no arithmetic is done and even the full
models at 1024 x 1024 take a second.

Usage::

    python scripts/model_stats.py                      # every model, 512 and 1024, K = 7
    python scripts/model_stats.py --models hi_resnet --sizes 512 1024 --json stats.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.models import create_model, list_models

logger = logging.getLogger("model_stats")

#: Figures the papers report (parameters in M; FLOPs in G as printed, unit ambiguous), for the side-by-side table.
PAPER_FIGURES: dict[str, dict[str, Any]] = {
    "hi_resnet": {"params_m": 26.0, "gflops": {512: 57.0, 1024: 402.0}, "source": "Hi-ResNet paper, Table X / text"},
}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_stats(name: str, sizes: list[int], num_classes: int, options: dict[str, Any]) -> dict[str, Any]:
    """Parameters (real model) and FLOPs per input size (same model on the meta device)."""
    params = count_parameters(create_model(name, num_classes=num_classes, **options))
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **options).eval()
    in_channels = int(getattr(model, "in_channels", 3))
    flops: dict[int, int] = {}
    for size in sizes:
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.empty(1, in_channels, size, size, device="meta"))
        flops[size] = int(counter.get_total_flops())
    return {"model": name, "params": params, "flops": flops}


def format_table(rows: list[dict[str, Any]], sizes: list[int]) -> str:
    head = ["model", "params (M)", "paper params (M)"]
    for size in sizes:
        head += [f"GFLOPs @{size}", f"GMACs @{size}", f"paper G @{size}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        paper = PAPER_FIGURES.get(row["model"], {})
        cells = [row["model"], f"{row['params'] / 1e6:.2f}", str(paper.get("params_m", "-"))]
        for size in sizes:
            flops = row["flops"][size]
            cells += [f"{flops / 1e9:.1f}", f"{flops / 2e9:.1f}", str(paper.get("gflops", {}).get(size, "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list_models(), help="registry names (default: all)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024], help="square input edges in pixels")
    parser.add_argument("--num-classes", type=int, default=7, help="K (7 = LoveDA)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [model_stats(name, args.sizes, args.num_classes, {}) for name in args.models]
    logger.info("%s", format_table(rows, args.sizes))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

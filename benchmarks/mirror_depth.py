"""Held-out mIoU with tiles mirrored as far as the grid reaches or without limit (engine.inference.tiling.MIRROR_DEPTH).

Runs :mod:`benchmarks.default_model` on its test split (Dubai tile 1) for one model file, once per policy, side by
side in one process, and prints ``{"grid": mIoU, "unlimited": mIoU}``. Issue 18 chose ``unlimited`` with it
(`benchmarks/results/mirror_depth_held_out.json`).

Usage: PYTHONPATH=. .venv/bin/python -m benchmarks.mirror_depth MODEL.onnx [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from unittest import mock

from benchmarks import default_model
from engine.inference import tiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", default="2")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in ("grid", "unlimited"):
            out = Path(tmp) / f"{policy}.json"
            argv = ["default_model", "--models", str(args.model), "--splits", "test", "--threads", args.threads]
            with mock.patch.object(tiling, "MIRROR_DEPTH", policy), mock.patch("sys.argv", [*argv, "--out", str(out)]):
                default_model.main()
            results[policy] = round(json.loads(out.read_text())["rows"][0]["miou"], 4)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

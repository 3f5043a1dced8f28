#!/usr/bin/env python3
"""Write a tiny fake of the UAVid layout into ./raw (seeded, reproducible).

raw/uavid_{train,val,test}/seqN/Images/<frame>.png   RGB, 64x36 and 68x36 (3840x2160 and 4096x2160 scaled down)
raw/uavid_{train,val}/seqN/Labels/<frame>.png        RGB colour labels, 8 classes + white (ignored)
"""

from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = np.array(
    [
        (128, 0, 0),
        (128, 64, 128),
        (0, 128, 0),
        (128, 128, 0),
        (64, 0, 128),
        (192, 0, 192),
        (64, 64, 0),
        (0, 0, 0),
        (255, 255, 255),
    ],
    np.uint8,
)
FRAMES = {
    ("uavid_train", "seq1", "000000"): 64,
    ("uavid_train", "seq2", "000100"): 68,
    ("uavid_val", "seq16", "000000"): 64,
    ("uavid_test", "seq21", "000000"): 68,
}
HEIGHT = 36
HERE = Path(__file__).resolve().parent


def main():
    rng = np.random.default_rng(42)
    for (split, seq, frame), width in FRAMES.items():
        folder = HERE / "raw" / split / seq
        (folder / "Images").mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, size=(HEIGHT, width, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / "Images" / f"{frame}.png")
        if split == "uavid_test":
            continue
        grid = rng.integers(0, len(PALETTE), size=(3, 4))
        classes = grid[np.arange(HEIGHT)[:, None] * 3 // HEIGHT, np.arange(width)[None, :] * 4 // width]
        (folder / "Labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(PALETTE[classes]).save(folder / "Labels" / f"{frame}.png")


if __name__ == "__main__":
    main()

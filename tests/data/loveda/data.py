#!/usr/bin/env python3
"""Write a tiny fake of the LoveDA Zenodo tree into ./raw (seeded, reproducible).

raw/{Train,Val,Test}/{Urban,Rural}/images_png/<n>.png   32x32 RGB
raw/{Train,Val}/{Urban,Rural}/masks_png/<n>.png         uint8, 0 = no-data, 1..7 = classes
Test has no masks (hidden labels), like the real release.
"""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
FILES = {
    ("Train", "Urban"): (1, 2),
    ("Train", "Rural"): (3,),
    ("Val", "Urban"): (4,),
    ("Val", "Rural"): (5,),
    ("Test", "Urban"): (6,),
    ("Test", "Rural"): (7,),
}
HERE = Path(__file__).resolve().parent


def main():
    rng = np.random.default_rng(7)
    for (split, scene), names in FILES.items():
        folder = HERE / "raw" / split / scene
        for n in names:
            (folder / "images_png").mkdir(parents=True, exist_ok=True)
            image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / "images_png" / f"{n}.png")
            if split == "Test":
                continue
            grid = rng.integers(0, 8, size=(4, 4)).astype(np.uint8)
            mask = np.kron(grid, np.ones((SIZE // 4, SIZE // 4), np.uint8))
            (folder / "masks_png").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(folder / "masks_png" / f"{n}.png")


if __name__ == "__main__":
    main()

"""Write scikit-learn's handwritten digits (UCI optdigits, shipped with scikit-learn) as a
folder of class folders, for `bench/accuracy.py`: a second real dataset that installs offline.

    python bench/make_digits.py OUT_DIR [--per-class 50] [--size 64]

Each 8x8, 17-level image becomes an upscaled 8-bit grayscale PNG. Orientation matters here
(a 6 rotated is a 9), the opposite of galaxies: a good check that view choices follow the data.
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    digits = load_digits()
    out = Path(args.out)
    for label in range(10):
        folder = out / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(digits.target == label)[: args.per_class]:
            pixels = (255 - digits.images[i] * 255 / 16).astype(np.uint8)  # dark ink on white
            image = Image.fromarray(pixels).resize((args.size, args.size), Image.BILINEAR)
            image.save(folder / f"{i:04d}.png")
    print(f"wrote {10 * args.per_class} images to {out}")


if __name__ == "__main__":
    main()

"""A tiny data set of coloured shapes in the plain-folder layout, made on the fly for tests."""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("background", "square", "disc")


def make_shapes_folder(root: Path, *, train: int = 16, val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """root/images/*.png, root/masks/*.png, root/classes.txt, root/train.txt, root/val.txt."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    yy, xx = np.mgrid[:size, :size]
    stems = []
    for index in range(train + val):
        image = rng.integers(60, 120, size=(size, size, 3)).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        top, left, side = *rng.integers(0, size // 2, 2), int(rng.integers(size // 4, size // 2))
        square = (yy >= top) & (yy < top + side) & (xx >= left) & (xx < left + side)
        image[square], mask[square] = (220, 40, 40), 1
        cy, cx, radius = *rng.integers(size // 4, 3 * size // 4, 2), int(rng.integers(size // 8, size // 4))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image[disc], mask[disc] = (40, 60, 230), 2
        stem = f"shape{index:03d}"
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
        stems.append(stem)
    (root / "train.txt").write_text("\n".join(stems[:train]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[train:]) + "\n")
    return root

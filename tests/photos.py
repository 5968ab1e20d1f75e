"""Test photos with a known appearance: a phone's EXIF-rotated JPEG and a 16-bit PNG, each with what a viewer
shows, computed without fcnseg's reader."""

from pathlib import Path

import numpy as np
from PIL import Image

import fcnseg

EXAMPLE = Path(fcnseg.__file__).parent / "assets" / "examples" / "0016E5_07997.png"
ORIENTATION = 0x0112  # the EXIF tag


def photo(width: int = 96, height: int = 72) -> np.ndarray:
    """``(H, W, 3)`` uint8, upright: the shipped road scene, downscaled."""
    with Image.open(EXAMPLE) as image:
        return np.array(image.convert("RGB").resize((width, height)))


def save_exif_rotated_jpeg(path: Path, upright: np.ndarray) -> np.ndarray:
    """Write ``upright`` as a phone does when held sideways: pixels stored turned 90 degrees anticlockwise, EXIF
    orientation 6. Returns what a viewer shows, computed without Pillow's exif_transpose: the decoded stored
    pixels turned 90 degrees clockwise, as orientation 6 says."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.rot90(upright, k=1)).save(path, format="JPEG", quality=95, exif=exif)
    with Image.open(path) as stored:
        decoded = np.array(stored.convert("RGB"))  # (W, H, 3): the stored orientation
    return np.ascontiguousarray(np.rot90(decoded, k=-1))  # (H, W, 3)


def save_16bit_png(path: Path, grey: np.ndarray) -> None:
    """``grey`` (H, W) uint8 as a 16-bit greyscale PNG holding the same intensities (v -> 257 v, 255 -> 65535)."""
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    with Image.open(path) as written:
        assert written.mode == "I;16"

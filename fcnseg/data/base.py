"""What every data set shares: `DatasetInfo`, `DataError`, file readers with clear errors, and the
`SegmentationDataset` base that turns (image path, mask path) samples into `(Image, Mask)` pairs.

`rgb_pixels` is the one image conversion of fcnseg: the data sets, eval, predict, heatmap and the server's
`decode_image` all read photos through it, so one file gives the same pixels everywhere. Images and masks are
both read upright, each by its own EXIF orientation (annotation tools draw on the upright image and write masks
without an orientation tag; the public data sets carry none), so a mask lines up with its image as shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

# Any callable `transforms(image, target) -> (image, target)`, e.g. `fcnseg.data.transforms.JointTransform`.
PairTransform = Callable[[Any, Any], tuple[Any, Any]]

MASK_MODES = ("P", "L", "I", "I;16")  # palette or grayscale: pixel values are the label indices
# What Pillow raises for missing, truncated or foreign files (SyntaxError: "broken PNG file").
PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(ValueError):
    """A data set on disk is missing, malformed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the metrics need to know about a data set's labels."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------- files and folders


def require_dir(path: Path, *, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"missing {what} folder: {path}")
    return path


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list file."""
    if not path.is_file():
        raise DataError(f"missing list file: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def require_files(paths: Iterable[Path], *, what: str) -> None:
    """Raise one DataError listing (a few of) the files that do not exist."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DataError(f"{len(missing)} missing {what} file(s): {shown}{more}")


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image as ``(H, W, 3)`` uint8 RGB, shown upright (EXIF orientation applied).

    Modes with more than 8 bits are scaled, not clipped: 16-bit (``I;16*``) and 32-bit integer (``I``, taken
    as 16-bit data, as Pillow opens 16-bit files) by 255 / 65535; float (``F``) by 255 when its values lie in
    [0, 1], else taken as 0-255. Palette images use their colours; alpha is ignored (a transparent pixel keeps
    its stored colour); CMYK, YCbCr, greyscale and bilevel go through Pillow's RGB conversion.
    """
    image = ImageOps.exif_transpose(image)  # (W, H) as shown; a copy without the orientation tag
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)  # (H, W)
        if image.mode != "F":
            values = values * (255 / 65535)
        elif values.size and np.nanmax(values) <= 1.0:
            values = values * 255
        grey = np.clip(np.nan_to_num(values).round(), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)  # (H, W, 3)
    if image.mode in ("P", "PA"):  # through RGBA: Pillow warns on palette transparency converted straight to RGB
        image = image.convert("RGBA")
    return np.array(image.convert("RGB"))  # (H, W, 3)


def read_image(path: Path) -> torch.Tensor:
    """An image file as a uint8 RGB tensor (3, H, W), upright and converted as `rgb_pixels` says."""
    try:
        with Image.open(path) as image:
            rgb = rgb_pixels(image)  # (H, W, 3)
    except Exception as error:  # Pillow's decoders and EXIF parser raise OSError, ValueError,
        # SyntaxError, struct.error, ... on bad files: whatever the type, the file is at fault
        raise DataError(f"cannot read image {path}: {_describe(error)}") from error
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # (3, H, W)


def _describe(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image file Pillow can read (unknown format, empty or corrupt)"
    return text.replace(" (or use ImageFile.LOAD_TRUNCATED_IMAGES)", "")


def read_label_png(path: Path) -> np.ndarray:
    """A palette or grayscale label image as its (H, W) indices, never converted through RGB; upright by its
    own EXIF orientation, as `read_image` reads its photo."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)
            mode = upright.mode
            labels = np.array(upright)  # (H, W)
    except Exception as error:  # as read_image
        raise DataError(f"cannot read mask {path}: {_describe(error)}") from error
    if mode not in MASK_MODES:
        raise DataError(
            f"mask {path} has mode {mode!r}; expected a palette or grayscale image of label indices "
            f"({', '.join(MASK_MODES)}), not colours"
        )
    return labels


def read_mat(path: Path, key: str) -> Any:
    """Variable `key` of a MATLAB .mat file."""
    try:
        contents = scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError) as error:
        raise DataError(f"cannot read .mat file {path}: {error}") from error
    if key not in contents:
        found = sorted(name for name in contents if not name.startswith("__"))
        raise DataError(f".mat file {path} has no variable {key!r} (found {found})")
    return contents[key]


# ---------------------------------------------------------------- checks


def check_size(*, mask: np.ndarray, image_size: tuple[int, int], mask_path: Path, image_path: Path) -> None:
    if mask.ndim != 2:
        raise DataError(f"mask {mask_path} should be (H, W), got shape {mask.shape}")
    if tuple(mask.shape) != tuple(image_size):
        swapped = tuple(mask.shape) == tuple(image_size)[::-1]
        hint = (" (height and width swapped: both are read upright by their own EXIF orientation; was the mask "
                "drawn on the stored, unrotated image?)") if swapped else ""
        raise DataError(
            f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]}{hint}"
        )


def check_labels(mask: np.ndarray, *, info: DatasetInfo, path: Path) -> None:
    """Every label is a class index in [0, num_classes) or the ignore index."""
    valid = ((mask >= 0) & (mask < info.num_classes)) | (mask == info.ignore_index)
    if not valid.all():
        bad = np.unique(mask[~valid])
        raise DataError(
            f"mask {path} holds label(s) {bad[:10].tolist()} outside [0, {info.num_classes}) and the ignore "
            f"index {info.ignore_index} of {info.name}"
        )


def to_mask(labels: np.ndarray) -> tv_tensors.Mask:
    return tv_tensors.Mask(torch.from_numpy(labels.astype(np.int64)))  # (H, W) int64


# ---------------------------------------------------------------- the dataset


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples of (image path, mask path) read as `(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))`.

    Subclasses say where the files are and override `load_mask` to decode their label format (remapping void
    to `info.ignore_index`); multi-modal subclasses keep extra paths in each sample tuple and override
    `__getitem__`. `transforms(image, mask)`, when given, is applied to every pair.
    """

    def __init__(
        self,
        *,
        samples: Sequence[tuple[Path, ...]],
        info: DatasetInfo,
        transforms: PairTransform | None = None,
        source: str = "",
    ) -> None:
        if not samples:
            raise DataError(f"empty split of {info.name}: no samples in {source or 'the given list'}")
        self.samples = [tuple(Path(path) for path in sample) for sample in samples]
        self.info = info
        self.transforms = transforms
        self.source = source
        self._decoded: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # keep_decoded()

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, path: Path) -> np.ndarray:
        """The (H, W) label map of one sample, void already mapped to `info.ignore_index`."""
        return read_label_png(path)

    def reads_one_pair(self) -> bool:
        """Whether a sample is one image file and one mask file (`load_pair`), not several (NYUDv2, SIFT Flow)."""
        return type(self).__getitem__ is SegmentationDataset.__getitem__

    def keep_decoded(self) -> int:
        """Read and check every sample now, and keep them decoded in memory for `load_pair`; returns the bytes kept.

        Training reads each image many times; decoding its PNG is most of a sample's CPU time (CamVid: 6.0 ms of
        8.7 on one Zen4 core, bench/train_data.py), taken from the training step's cores. The pixels are kept as
        uint8 images and uint8 masks (int64 where labels exceed 255), in one process: DataLoader workers forked
        after this share them. Only for data sets that read one image and one mask a sample (not NYUDv2 or SIFT
        Flow).
        """
        if not self.reads_one_pair():
            raise DataError(
                f"cache_images: {self.info.name} reads more than one image or mask a sample; it cannot be kept decoded"
            )
        decoded = []
        for index in range(len(self)):
            image, mask = self._read_pair(index)
            mask_dtype = torch.uint8 if mask.numel() == 0 or int(mask.max()) <= 255 else torch.int64
            decoded.append((image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).to(mask_dtype)))
        self._decoded = decoded
        return sum(image.nbytes + mask.nbytes for image, mask in decoded)

    def load_pair(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Sample `index` read and checked (or kept, after `keep_decoded`), before transforms."""
        if self._decoded is not None:
            image, mask = self._decoded[index]
            return tv_tensors.Image(image.clone()), tv_tensors.Mask(mask.to(torch.int64))  # transforms own copies
        return self._read_pair(index)

    def _read_pair(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image_path, mask_path = self.samples[index][:2]
        image = read_image(image_path)
        mask = self.load_mask(mask_path)
        check_size(mask=mask, image_size=tuple(image.shape[-2:]), mask_path=mask_path, image_path=image_path)
        check_labels(mask, info=self.info, path=mask_path)
        return tv_tensors.Image(image), to_mask(mask)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, mask = self.load_pair(index)
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name}, {len(self)} samples from {self.source})"

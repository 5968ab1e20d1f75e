"""Your own data in a plain folder.

  root/images/<stem>.{jpg,jpeg,png,bmp,tif,tiff}
  root/masks/<stem>.png       palette or grayscale PNG of label indices (0 .. num_classes-1, 255 = ignore)
  root/classes.txt            one class name a line, line i naming label i (FolderDataset may take num_classes
                              instead; `fcnseg train` reads the classes from this file)
  root/{split}.txt            optional: the stems of a split, one a line; split "all" (without all.txt) takes
                              every image (`fcnseg train ... train_split=all val_split=all`)

Images and masks are read upright, each by its own EXIF orientation (`fcnseg.data.base`).
"""

from __future__ import annotations

from pathlib import Path

from fcnseg.data.base import (
    DataError,
    DatasetInfo,
    PairTransform,
    SegmentationDataset,
    read_list,
    require_dir,
)
from fcnseg.data.palettes import generated_palette

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def folder_info(root: Path, *, num_classes: int | None, ignore_index: int = 255) -> DatasetInfo:
    """Class names from root/classes.txt, or "class_<i>" for `num_classes` classes."""
    if not root.is_dir():
        raise DataError(f"data set root {root} {'is a file, not a folder' if root.exists() else 'does not exist'}")
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        class_names = tuple(read_list(classes_file))
        if not class_names:
            raise DataError(f"class list {classes_file} is empty")
        if num_classes is not None and num_classes != len(class_names):
            raise DataError(f"num_classes={num_classes} but {classes_file} lists {len(class_names)} classes")
    elif num_classes is not None and num_classes > 0:
        class_names = tuple(f"class_{index}" for index in range(num_classes))
    else:
        raise DataError(
            f"missing class list {classes_file}: write the class names there, one a line (line i names label i); "
            "in Python, FolderDataset(..., num_classes=N) works without it"
        )
    return DatasetInfo(
        name="folder",
        class_names=class_names,
        palette=generated_palette(len(class_names)),
        ignore_index=ignore_index,
    )


def find_images(image_dir: Path) -> dict[str, Path]:
    """{stem: image path}, refusing two images with one stem."""
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in images:
            raise DataError(f"two images share the stem {path.stem!r}: {images[path.stem]} and {path}")
        images[path.stem] = path
    return images


def folder_samples(root: Path, split: str) -> tuple[list[tuple[Path, Path]], str]:
    image_dir = require_dir(root / "images", what="images")
    mask_dir = require_dir(root / "masks", what="masks")
    images = find_images(image_dir)
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        stems, source = read_list(list_file), str(list_file)
        unknown = [stem for stem in stems if stem not in images]
        if unknown:
            raise DataError(f"{list_file} lists {len(unknown)} stem(s) with no image in {image_dir}: {unknown[:5]}")
    elif split == "all":
        stems, source = sorted(images), str(image_dir)
    else:
        raise DataError(
            f"missing list file {list_file}: list the split's image stems there, one a line, or use every image "
            "with the split 'all' (fcnseg train ... train_split=all val_split=all; in Python, split='all')"
        )
    unmatched = [str(images[stem]) for stem in stems if not (mask_dir / f"{stem}.png").is_file()]
    if unmatched:
        raise DataError(
            f"{len(unmatched)} image(s) have no mask <stem>.png in {mask_dir}, e.g. {', '.join(unmatched[:5])}"
        )
    return [(images[stem], mask_dir / f"{stem}.png") for stem in stems], source


class FolderDataset(SegmentationDataset):
    """A plain folder: `(Image uint8 (3, H, W), Mask int64 (H, W))`."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        transforms: PairTransform | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
    ) -> None:
        root = Path(root)
        info = folder_info(root, num_classes=num_classes, ignore_index=ignore_index)  # checks root first
        samples, source = folder_samples(root, split)
        super().__init__(samples=samples, info=info, transforms=transforms, source=source)


def build_folder(root: str | Path, split: str, *, transforms: PairTransform | None = None) -> FolderDataset:
    return FolderDataset(root, split, transforms=transforms)

"""What a predict run reads and writes, decided and checked before any model runs.

Inputs are image files, folders (walked with their subfolders), glob patterns (``"photos/**/*.jpg"``, quoted so
the shell leaves them alone) and list files (``@list.txt``: one image path per line, relative to the list's own
folder; blank lines and ``#`` comments skipped). Output names mirror the inputs: a file ``x.jpg`` gives
``OUT/x_labels.png`` (and ``OUT/x_overlay.png``); a folder's ``sub/y.png`` gives ``OUT/sub/y_labels.png``, and so
does the match ``photos/sub/y.png`` of a pattern ``photos/**/*.png`` (the path below the pattern's fixed folders). Two
inputs that would write the same name (``x.png`` and ``x.jpg``, or ``x.png`` in two input folders) are refused
before anything runs, as are missing inputs and an output folder that cannot be written.

Under ``torchrun`` every rank plans the same sorted job list and takes jobs ``rank, rank + W, ...`` of it
(``fcnseg.distributed.shard``), so no two ranks ever write one file. ``skip_existing`` then passes over the
jobs whose label PNG is already there (outputs are written overlay first, label PNG last, each atomically, so
a label PNG marks a finished image).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from fcnseg.data.base import DataError
from fcnseg.outputs import require_writable_dir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
GLOB_CHARACTERS = "*?["
MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class PredictionPlan:
    """This rank's share of a predict run."""

    out_dir: Path
    jobs: tuple[tuple[Path, Path], ...]  # (input image, its outputs' stem: OUT/<relative folder>/<stem>) to run
    skipped: tuple[tuple[Path, str], ...]  # (path inside an input folder, why it is not read)
    done: tuple[tuple[Path, Path], ...] = ()  # jobs whose outputs exist already (``skip_existing``)
    rank: int = 0
    world_size: int = 1

    @property
    def manifest_path(self) -> Path:
        """``OUT/manifest.jsonl``; under torchrun each rank's shard ``OUT/manifest.rank<r>.jsonl``, merged by rank 0
        into ``manifest.jsonl`` at the end (``fcnseg.predict.merge_manifests``)."""
        if self.world_size == 1:
            return self.out_dir / MANIFEST_NAME
        return self.out_dir / f"manifest.rank{self.rank}.jsonl"


def output_path(stem: Path, kind: str) -> Path:
    """``OUT/sub/x`` -> ``OUT/sub/x_labels.png`` (``kind`` "labels") or ``..._overlay.png``."""
    return stem.with_name(f"{stem.name}_{kind}.png")


def walk_folder(folder: Path, *, out_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images under ``folder`` and its subfolders (sorted), and what is passed over with the reason: other
    files, hidden files and folders, links to folders (not followed), folders that cannot be listed and the output
    folder itself."""
    images, skipped = [], []
    out_resolved = out_dir.resolve()

    def unreadable(error: OSError) -> None:
        skipped.append((Path(error.filename), f"cannot list the folder: {error.strerror}"))

    for parent, folders, files in os.walk(folder, onerror=unreadable):
        parent = Path(parent)
        kept = []
        for name in sorted(folders):
            path = parent / name
            if name.startswith("."):
                skipped.append((path, "hidden folder"))
            elif path.is_symlink():
                skipped.append((path, "link to a folder, not followed"))
            elif path.resolve() == out_resolved:
                skipped.append((path, "the output folder"))
            else:
                kept.append(name)
        folders[:] = kept  # os.walk descends into these, in this order
        for name in sorted(files):
            path = parent / name
            if name.startswith("."):
                skipped.append((path, "hidden file"))
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((path, f"not an image file name ({', '.join(IMAGE_SUFFIXES)})"))
            else:
                images.append(path)
    return images, skipped


def read_image_list(path: Path) -> list[Path]:
    """The image paths a list file names, one per line, relative to the list's folder."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the image list: {getattr(error, 'strerror', None) or error}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise DataError(f"{path}: the image list names no images")
    return [path.parent / entry for entry in entries]


def expand_glob(pattern: str) -> list[Path]:
    """The files a glob pattern matches (``**`` spans folders), sorted; hidden files only when named."""
    matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True) if Path(match).is_file())
    if not matches:
        raise DataError(f"{pattern}: the pattern matches no files")
    return matches


def glob_base(pattern: str) -> Path:
    """The folders a pattern names before its first wildcard: ``photos/2024/**/*.jpg`` -> ``photos/2024``."""
    parts = Path(pattern).parts
    first_wildcard = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARACTERS))
    return Path(*parts[:first_wildcard]) if first_wildcard else Path(".")


def _jobs_of(item: str | Path, *, out_dir: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    text = str(item)
    path = Path(item)
    if text.startswith("@"):
        return [(image, out_dir / image.stem) for image in read_image_list(Path(text[1:]))], []
    if path.is_dir():
        images, passed_over = walk_folder(path, out_dir=out_dir)
        if not images:
            raise DataError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}), subfolders included")
        return [(image, out_dir / image.relative_to(path).with_suffix("")) for image in images], passed_over
    if path.is_file():
        return [(path, out_dir / path.stem)], []
    if any(character in text for character in GLOB_CHARACTERS):
        base = glob_base(text)  # outputs mirror the matches' paths below the pattern's fixed folders
        return [(image, out_dir / image.relative_to(base).with_suffix("")) for image in expand_glob(text)], []
    raise DataError(f"{path}: no such file or folder")


def plan_predictions(inputs: list[str | Path] | str | Path, out_dir: str | Path, *, skip_existing: bool = False,
                     rank: int = 0, world_size: int = 1) -> PredictionPlan:
    """Every input image with its output stem, this rank's share of them, and which are done already.

    Raises ``DataError`` for a missing input, a folder without images, a glob without matches, an unreadable
    list or two inputs with one output name, and ``OutputError`` when ``out_dir`` cannot be written.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    out_dir = Path(out_dir)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    jobs: list[tuple[Path, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for item in inputs:
        found, passed_over = _jobs_of(item, out_dir=out_dir)
        jobs += found
        skipped += passed_over
    jobs = list(dict.fromkeys(jobs))  # the same file named twice is segmented once
    _refuse_shared_outputs(jobs)
    require_writable_dir(out_dir)
    mine = jobs[rank::world_size]
    done = [job for job in mine if skip_existing and output_path(job[1], "labels").is_file()]
    finished = set(done)
    todo = [job for job in mine if job not in finished]
    return PredictionPlan(out_dir=out_dir, jobs=tuple(todo), skipped=tuple(skipped), done=tuple(done), rank=rank,
                          world_size=world_size)


def _refuse_shared_outputs(jobs: list[tuple[Path, Path]]) -> None:
    first: dict[Path, Path] = {}
    clashes = []
    for image, stem in jobs:
        if stem in first:
            clashes.append(f"{first[stem]} and {image} -> {output_path(stem, 'labels')}")
        else:
            first[stem] = image
    if clashes:
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise DataError(
            f"{len(clashes)} output name(s) would hold two inputs' results: {'; '.join(clashes[:3])}{more}. "
            "Rename one of each pair, or predict them into separate --out folders"
        )

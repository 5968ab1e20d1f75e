"""The manifest of a predict run: ``OUT/manifest.jsonl``, one JSON object per image, appended as each image is
written: ``{"input", "labels", "overlay", "height", "width", "classes": {name: share}, "ms", "error"}``
(``ms``: the model's time for the image, its share of a batch; ``error``: why an unreadable image has no
outputs). A run resumed with ``skip_existing`` keeps the lines it finds, drops a line a crash cut short, and
adds a line rebuilt from the label PNG (``"ms": null``, ``"resumed": true``) for a finished image whose line was
lost. Under torchrun each rank appends to its own shard, merged by rank 0 at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

from fcnseg.data.base import DataError, read_label_png
from fcnseg.outputs import write_atomically
from fcnseg.predict.pictures import class_shares
from fcnseg.predict.plan import MANIFEST_NAME, output_path

SHARD_PATTERN = "manifest.rank*.jsonl"


def read_manifest(path: Path) -> tuple[list[dict], bool]:
    """The records of a manifest file, and whether a line was cut short or garbled (then dropped)."""
    if not path.is_file():
        return [], False
    records, damaged = [], False
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            damaged = True
            continue
        if isinstance(record, dict) and "input" in record:
            records.append(record)
        else:
            damaged = True
    return records, damaged


def write_manifest(path: Path, records: list[dict]) -> None:
    """Replace ``path`` with ``records``, atomically."""
    write_atomically(path, lambda stream: stream.writelines(json.dumps(record) + "\n" for record in records),
                     binary=False)


class ManifestWriter:
    """Appends one line per result to a manifest file, flushed at once (a crash loses at most a partial line)."""

    def __init__(self, path: Path):
        records, damaged = read_manifest(path)
        if damaged:
            write_manifest(path, records)
        self.path = path
        self.recorded = {record["input"] for record in records}
        self._stream = open(path, "a")

    def write(self, result: dict) -> None:
        record = {key: value for key, value in result.items() if key != "image"}
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()
        self.recorded.add(record["input"])

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def recorded_inputs(out_dir: Path) -> set[str]:
    """The inputs the run's manifest and its shards hold a line for."""
    paths = [out_dir / MANIFEST_NAME, *sorted(out_dir.glob(SHARD_PATTERN))]
    return {record["input"] for path in paths for record in read_manifest(path)[0]}


def record_from_outputs(image: Path, stem: Path, class_names: tuple[str, ...]) -> dict:
    """A finished image's manifest line rebuilt from its label PNG (its palette indices are the labels)."""
    label_file = output_path(stem, "labels")
    overlay_file = output_path(stem, "overlay")
    try:
        labels = read_label_png(label_file)  # (H, W)
    except DataError as error:
        return {"input": str(image), "labels": str(label_file), "overlay": None, "height": None, "width": None,
                "classes": {}, "ms": None, "error": str(error), "resumed": True}
    return {"input": str(image), "labels": str(label_file),
            "overlay": str(overlay_file) if overlay_file.is_file() else None,
            "height": int(labels.shape[0]), "width": int(labels.shape[1]),
            "classes": class_shares(labels, class_names), "ms": None, "error": None, "resumed": True}


def merge_manifests(out_dir: str | Path) -> int:
    """Fold the rank shards into ``OUT/manifest.jsonl`` (one line per input, the latest kept, sorted by input)
    and remove them; returns the number of lines. Rank 0 calls it once every rank has finished."""
    out_dir = Path(out_dir)
    shards = sorted(out_dir.glob(SHARD_PATTERN))
    main = out_dir / MANIFEST_NAME
    by_input: dict[str, dict] = {}
    for path in [main, *shards]:
        for record in read_manifest(path)[0]:
            by_input[record["input"]] = record
    if shards or main.is_file():
        write_manifest(main, [by_input[key] for key in sorted(by_input)])
    for path in shards:
        path.unlink()
    return len(by_input)

"""A run's logs: ``log.csv`` (one row per logged step) and, with ``tensorboard=true``, TensorBoard events.

``drop_rows_after(path, step)`` runs before a run (re)starts at ``step``: rows a killed run logged past its
checkpoint are replayed by ``--resume``, so a resumed run's log equals an uninterrupted run's.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path


def append_row(path: Path, row: dict, fields: list[str]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({key: row.get(key, "") for key in fields})


def drop_rows_after(path: Path, step: int) -> int:
    """Keep the header and the complete rows up to ``step`` (replaced atomically); returns the rows dropped.

    Rows are in step order; a row cut short by a kill, and everything after it, is dropped too.
    """
    if not path.is_file():
        return 0
    with path.open(newline="") as stream:  # keep the csv module's \r\n line ends
        lines = stream.read().splitlines(keepends=True)
    if not lines:
        return 0
    width = len(next(csv.reader(lines[:1])))
    kept = lines[:1]
    for line in lines[1:]:
        fields = next(csv.reader([line]))
        if not line.endswith("\n") or len(fields) != width or not fields[0].isdigit() or int(fields[0]) > step:
            break
        kept.append(line)
    if len(kept) == len(lines):
        return 0
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", newline="") as stream:
        stream.write("".join(kept))
    os.replace(temp, path)
    return len(lines) - len(kept)


def tensorboard_writer(out: Path, *, start_step: int):
    """A SummaryWriter in ``out/tensorboard`` that hides events past ``start_step`` (a resumed run's replay)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ValueError("tensorboard=true needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)

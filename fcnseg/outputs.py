"""Output folders and files probed for writing before any work, so a run never fails at its first save."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


class OutputError(ValueError):
    """An output folder or file that cannot be written; the message names it and says why."""


def _reason(error: OSError) -> str:
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def require_writable_dir(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """``path`` as a folder this process can create files in (made, with its parents, when missing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # the real test: permissions, read-only mounts, ACLs, quotas
            pass
    except OSError as error:
        raise OutputError(f"cannot write to {what} {path}: {_reason(error)}") from None
    return path


def require_writable_file(path: str | os.PathLike, *, what: str = "output file") -> Path:
    """``path`` as a file this process can write (its folder made when missing); an existing file is kept."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    require_writable_dir(path.parent if str(path.parent) else Path("."), what=f"folder of {what} {path}")
    if path.exists():
        try:
            with open(path, "ab"):  # appends nothing: opening for writing is the probe
                pass
        except OSError as error:
            raise OutputError(f"cannot write {what} {path}: {_reason(error)}") from None
    return path


def write_atomically(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = True) -> None:
    """``write(stream)`` into a temporary file beside ``path``, then rename it to ``path``: a reader (or a run
    resumed after a crash) never sees half a file. The file gets mode 0644, as a plain ``open`` would give it."""
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise

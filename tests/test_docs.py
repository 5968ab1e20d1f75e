"""Every Python path the README and docs name (``fcnseg.x.y``, ``from fcnseg.x import y``) exists."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"\bfcnseg(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
FROM_IMPORT = re.compile(r"from (fcnseg(?:\.[A-Za-z_][A-Za-z0-9_]*)*) import ([A-Za-z_][A-Za-z0-9_, ]*)")


def resolves(path: str) -> bool:
    """Whether ``path`` is a module, or an attribute chain on the longest importable module prefix."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def documented_paths() -> list[tuple[str, str]]:
    found = set()
    for document in DOCUMENTS:
        text = document.read_text()
        for match in DOTTED.finditer(text):
            found.add((document.name, match.group(0)))
        for module, names in FROM_IMPORT.findall(text):
            found.update((document.name, f"{module}.{name.strip()}") for name in names.split(",") if name.strip())
    return sorted(found)


@pytest.mark.parametrize("document, path", documented_paths())
def test_documented_python_path_exists(document, path):
    assert resolves(path), f"{document} names {path}, which does not exist"

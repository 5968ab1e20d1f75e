"""The model that ships inside the package (FCN-8s on EfficientNet-Lite0, trained on CamVid)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "fcn8s-lite0-camvid.pt"


def default_checkpoint_path() -> Path:
    if not DEFAULT_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"no --checkpoint given and the shipped model {DEFAULT_CHECKPOINT} is missing from this install"
        )
    return DEFAULT_CHECKPOINT

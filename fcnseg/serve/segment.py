"""What the server does to one upload, as plain functions testable without HTTP:
bytes -> checked RGB image -> label map -> PNGs and class shares.

``decode_image`` is the only place untrusted bytes meet a decoder. It accepts a fixed list of raster formats
(no EPS, whose Pillow plugin runs Ghostscript), reads the header first and refuses an image with more than
``max_pixels`` pixels before any pixel is decoded, so a small file that expands to gigabytes (a decompression
bomb) costs nothing. Every way a file can be bad becomes a ``BadImage`` carrying the HTTP status to answer.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fcnseg.data.base import rgb_pixels
from fcnseg.data.palettes import colorize
from fcnseg.predict import blend_overlay

# Pillow format names that the server decodes; anything else is refused as unsupported.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


class BadImage(ValueError):
    """An upload that is not an image the server will segment; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int):
        super().__init__(message)
        self.status = status


def format_bytes(num_bytes: int) -> str:
    """``12.3 MB`` (decimal megabytes, as upload limits are usually stated); small sizes in bytes."""
    if num_bytes < 100_000:
        return f"{num_bytes:,} bytes"
    return f"{num_bytes / 1e6:.1f}".removesuffix(".0") + " MB"


def format_pixels(num_pixels: int) -> str:
    """``12 megapixels``; small counts in pixels."""
    if num_pixels < 100_000:
        return f"{num_pixels:,} pixels"
    return f"{num_pixels / 1e6:.1f}".removesuffix(".0") + " megapixels"


def sniff_format(data: bytes) -> str | None:
    """The accepted format whose signature ``data`` starts with (Pillow's own test), or ``None``."""
    Image.init()  # registers every plugin's signature test in Image.OPEN
    for name in ACCEPTED_FORMATS:
        accept = Image.OPEN.get(name, (None, None))[1]
        if accept is not None and accept(data[:16]):
            return name
    return None


def decode_image(data: bytes, *, max_pixels: int) -> torch.Tensor:
    """Image file bytes -> ``(3, H, W)`` uint8 RGB, upright (EXIF orientation applied) and converted as
    ``fcnseg.data.base.rgb_pixels`` (the same pixels as ``fcnseg predict`` reads); raises ``BadImage``.

    415: not an image in ``ACCEPTED_FORMATS``. 413: more than ``max_pixels`` pixels (checked on the header,
    before decoding) or over Pillow's own decompression-bomb limit. 422: an image that is empty, truncated,
    corrupt or in a mode that has no RGB conversion.
    """
    if not data:
        raise BadImage("the uploaded file is empty", status=422)
    accepted = ", ".join(ACCEPTED_FORMATS)
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        looks_like = sniff_format(data)
        if looks_like:  # the signature of an accepted format, but Pillow could not parse what follows
            raise BadImage(f"the {looks_like} image could not be read (truncated or corrupt?)", status=422) from None
        raise BadImage(f"the upload is not an image this server reads (accepted: {accepted})", status=415) from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"the image is too large to decode safely: {error}", status=413) from None
    except Exception as error:  # noqa: BLE001 - a header Pillow recognized but could not parse, any error type
        raise BadImage(f"the image could not be read (truncated or corrupt?): {error}", status=422) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise BadImage(
                f"the image is {width}x{height} = {format_pixels(width * height)}, over the limit of "
                f"{format_pixels(max_pixels)} (--max-pixels)",
                status=413,
            )
        if width < 1 or height < 1:
            raise BadImage(f"the image has no pixels ({width}x{height})", status=422)
        try:
            image.load()  # the first frame only, for animated GIF, WebP and multi-page TIFF
            rgb = rgb_pixels(image)  # (H, W, 3): upright, 16-bit scaled, as every file reader of fcnseg
        except Image.DecompressionBombError as error:
            raise BadImage(f"the image is too large to decode safely: {error}", status=413) from None
        except Exception as error:  # noqa: BLE001 - Pillow's decoders raise OSError, ValueError, struct.error,
            # IndexError, ... on malformed data: whatever the type, the file is at fault, not the server
            raise BadImage(f"the {image.format} image could not be decoded (truncated or corrupt?): {error}",
                           status=422) from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # (3, H, W)


def class_shares(labels: torch.Tensor, class_names: tuple[str, ...],
                 palette: tuple[tuple[int, int, int], ...]) -> list[dict]:
    """The classes present in ``labels``, largest share first: ``[{"index", "name", "color", "share"}, ...]``.

    ``share`` is the fraction of the image's pixels with that label; ``color`` is ``[r, g, b]``.
    """
    counts = np.bincount(labels.reshape(-1).numpy(), minlength=len(class_names))  # (K,)
    present = [int(i) for i in np.nonzero(counts)[0]]
    present.sort(key=lambda i: (-counts[i], i))
    return [
        {
            "index": i,
            "name": class_names[i] if i < len(class_names) else f"class{i}",
            "color": list(palette[i]) if i < len(palette) else [0, 0, 0],
            "share": round(float(counts[i]) / labels.numel(), 6),
        }
        for i in present
    ]


def png_bytes(image: Image.Image) -> bytes:
    """PNG-encode ``image``; compression level 1 is several times faster than the default and barely larger."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass(frozen=True)
class EncodedResult:
    label_png: bytes  # palette PNG: pixel values are the class indices, its palette the class colours
    overlay_png: bytes  # RGB PNG: the photo with the class colours blended over it
    classes: list[dict]  # as ``class_shares``


def encode_result(image: torch.Tensor, labels: torch.Tensor, *, class_names: tuple[str, ...],
                  palette: tuple[tuple[int, int, int], ...], alpha: float,
                  include_labels: bool = True) -> EncodedResult:
    """The label map and overlay as PNG bytes, with the class shares; skips the label PNG unless asked."""
    label_png = png_bytes(colorize(labels, palette)) if include_labels else b""
    overlay_png = png_bytes(blend_overlay(image, labels, palette, alpha=alpha))
    return EncodedResult(label_png=label_png, overlay_png=overlay_png,
                         classes=class_shares(labels, class_names, palette))

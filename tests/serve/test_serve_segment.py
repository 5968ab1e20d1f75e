"""``fcnseg.serve.segment`` without HTTP: decoding with limits, label maps, class shares and the PNGs."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data.palettes import CAMVID_PALETTE
from fcnseg.predict import predict_labels as label_map
from fcnseg.serve.segment import (
    BadImage,
    class_shares,
    decode_image,
    encode_result,
    format_bytes,
    format_pixels,
)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_gives_upright_rgb_uint8():
    rgba = Image.new("RGBA", (5, 3), (10, 20, 30, 0))
    image = decode_image(png(rgba), max_pixels=15)
    assert image.shape == (3, 3, 5) and image.dtype == torch.uint8
    assert image[:, 0, 0].tolist() == [10, 20, 30]
    grey = decode_image(png(Image.new("L", (4, 2), 99)), max_pixels=100)
    assert grey.shape == (3, 2, 4) and grey.unique().tolist() == [99]


@pytest.mark.parametrize("data, status", [
    (b"", 422), (b"hello", 415), (png(Image.new("RGB", (4, 4)))[:40], 422),
])
def test_decode_refuses_bad_bytes_with_a_status(data, status):
    with pytest.raises(BadImage) as caught:
        decode_image(data, max_pixels=100)
    assert caught.value.status == status


def test_decode_checks_pixels_before_decoding():
    with pytest.raises(BadImage, match=r"5x4 = 20 pixels, over the limit of 19 pixels \(--max-pixels\)") as caught:
        decode_image(png(Image.new("RGB", (5, 4))), max_pixels=19)
    assert caught.value.status == 413


def test_label_map_is_the_argmax_of_the_scores():
    class Fixed(torch.nn.Module):
        def forward(self, x):  # (1, 3, H, W) -> (1, 3, H, W): scores are the normalized channels
            return x

    image = torch.tensor([[[0, 255]], [[255, 0]], [[10, 10]]], dtype=torch.uint8)  # (3, 1, 2)
    assert label_map(Fixed(), image, normalization="imagenet").tolist() == [[1, 0]]


def test_class_shares_count_pixels_largest_first():
    labels = torch.tensor([[3, 3, 3, 0], [0, 1, 3, 3]])  # 3: 5 pixels, 0: 2, 1: 1
    names = ("Sky", "Building", "Pole", "Road")
    shares = class_shares(labels, names, CAMVID_PALETTE)
    assert [(c["index"], c["name"], c["share"]) for c in shares] == [(3, "Road", 0.625), (0, "Sky", 0.25),
                                                                      (1, "Building", 0.125)]
    assert shares[0]["color"] == [128, 64, 128]


def test_encoded_pngs_hold_the_labels_and_the_blend():
    image = torch.zeros(3, 2, 3, dtype=torch.uint8)  # (3, H, W) black
    labels = torch.tensor([[0, 1, 2], [2, 1, 0]])
    result = encode_result(image, labels, class_names=("Sky", "Building", "Pole"), palette=CAMVID_PALETTE,
                           alpha=0.5)
    label_png = Image.open(io.BytesIO(result.label_png))
    assert label_png.mode == "P" and np.array(label_png).tolist() == labels.tolist()
    overlay = np.array(Image.open(io.BytesIO(result.overlay_png)))  # (H, W, 3): half of each class colour
    assert overlay[0, 1].tolist() == [64, 0, 0]
    assert encode_result(image, labels, class_names=("a", "b", "c"), palette=CAMVID_PALETTE, alpha=0.5,
                         include_labels=False).label_png == b""


def test_sizes_read_well():
    assert format_bytes(12_345_678) == "12.3 MB" and format_bytes(10_000_000) == "10 MB"
    assert format_bytes(1000) == "1,000 bytes"
    assert format_pixels(12_000_000) == "12 megapixels" and format_pixels(420) == "420 pixels"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damaged EXIF and TIFF tags it skips
def test_damaged_files_of_every_format_give_bad_image_only():
    """Flipped bytes and cut files in each accepted format: decoded or refused with a status, never another error."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt, options in [("PNG", {}), ("JPEG", {"exif": exif}), ("WEBP", {}), ("BMP", {}), ("GIF", {}),
                         ("TIFF", {"compression": "tiff_lzw"})]:
        buffer = io.BytesIO()
        photo.save(buffer, format=fmt, **options)
        original = buffer.getvalue()
        for _ in range(40):
            damaged = bytearray(original)
            for position in rng.integers(0, len(damaged), rng.integers(1, 9)):
                damaged[position] = rng.integers(0, 256)
            if rng.random() < 0.3:
                damaged = damaged[: rng.integers(0, len(damaged))]
            try:
                image = decode_image(bytes(damaged), max_pixels=10**6)
            except BadImage as error:
                assert error.status in (413, 415, 422)
            else:
                assert image.dtype == torch.uint8 and image.shape[0] == 3

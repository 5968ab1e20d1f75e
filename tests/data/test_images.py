"""One image reader everywhere (``fcnseg.data.base.rgb_pixels``): EXIF orientation applied, 16-bit and other
modes scaled rather than clipped, the same pixels from the data sets' ``read_image`` and the server's
``decode_image``; masks read upright by their own orientation, so they line up with their images."""

import io
from pathlib import Path

import numpy as np
import pytest
from photos import ORIENTATION, photo, save_16bit_png, save_exif_rotated_jpeg
from PIL import Image

from fcnseg.data.base import DataError, read_image, read_label_png
from fcnseg.data.folder import FolderDataset
from fcnseg.serve.segment import decode_image


def hwc(tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)


def test_exif_orientation_6_is_read_upright_by_every_reader(tmp_path):
    path = tmp_path / "phone.jpg"
    shown = save_exif_rotated_jpeg(path, photo())
    assert shown.shape == (72, 96, 3)
    np.testing.assert_array_equal(hwc(read_image(path)), shown)
    np.testing.assert_array_equal(hwc(decode_image(path.read_bytes(), max_pixels=10**6)), shown)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_greyscale_is_scaled_not_clipped(tmp_path, suffix):
    grey = np.array(Image.fromarray(photo()).convert("L"))  # (H, W) uint8
    wide = tmp_path / f"wide{suffix}"
    if suffix == ".png":
        save_16bit_png(wide, grey)
    else:  # big-endian 16-bit TIFF: Pillow's mode I;16B
        Image.fromarray((grey.astype(np.uint16) * 257).astype(">u2")).save(wide)
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    assert (hwc(read_image(wide)) < 255).mean() > 0.5  # not clipped to white
    np.testing.assert_array_equal(hwc(read_image(wide)), expected)
    np.testing.assert_array_equal(hwc(decode_image(wide.read_bytes(), max_pixels=10**6)), expected)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if image.mode in ("F", "I") else "PNG")
    return buffer.getvalue()


def palette_image_with_transparency() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1], [1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0])
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize("image, expected", [
    (Image.fromarray(np.array([[0, 32767, 65535]], dtype=np.int32)), [[0, 127, 255]]),  # I: 16-bit data, scaled
    (Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), [[0, 128, 255]]),  # F in [0, 1]: times 255
    (Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32)), [[0, 100, 255]]),  # F in 0-255 units
    (Image.new("LA", (3, 1), (77, 0)), [[77, 77, 77]]),  # alpha ignored
])
def test_wide_and_alpha_modes_become_grey_rgb(image, expected):
    data = png_bytes(image)
    got = decode_image(data, max_pixels=100)  # (3, 1, 3)
    assert got[0].tolist() == expected and got[1].tolist() == expected and got[2].tolist() == expected


def test_palette_with_transparency_gives_its_colours(tmp_path):
    path = tmp_path / "palette.png"
    palette_image_with_transparency().save(path)
    expected = [[[10, 20, 30], [200, 100, 50]], [[200, 100, 50], [0, 255, 0]]]
    assert hwc(read_image(path)).tolist() == expected
    assert hwc(decode_image(path.read_bytes(), max_pixels=100)).tolist() == expected


def test_a_mask_is_read_upright_by_its_own_orientation(tmp_path):
    labels = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)  # (2, 3) upright
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.rot90(labels, k=1), mode="L").save(tmp_path / "mask.png", exif=exif)
    np.testing.assert_array_equal(read_label_png(tmp_path / "mask.png"), labels)


def folder_with_one_sample(root: Path, *, image: np.ndarray, mask: np.ndarray, rotated_jpeg: bool) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("dark\nbright\n")
    if rotated_jpeg:
        save_exif_rotated_jpeg(root / "images" / "s.jpg", image)
    else:
        Image.fromarray(image).save(root / "images" / "s.png")
    Image.fromarray(mask, mode="L").save(root / "masks" / "s.png")


def test_a_phone_photo_and_its_upright_mask_line_up_in_a_data_set(tmp_path):
    upright = np.zeros((48, 64, 3), dtype=np.uint8)
    upright[:, 40:] = 255  # bright on the right, as shown
    mask = (upright[:, :, 0] > 127).astype(np.uint8)  # (48, 64): drawn on the upright image
    folder_with_one_sample(tmp_path, image=upright, mask=mask, rotated_jpeg=True)
    image, target = FolderDataset(tmp_path, "all")[0]
    assert tuple(image.shape) == (3, 48, 64) and tuple(target.shape) == (48, 64)
    brightness = image.float().mean(0)  # (H, W)
    assert brightness[target == 1].min() > 200 and brightness[target == 0].max() < 50


def test_a_mask_drawn_on_the_stored_rotated_image_is_named_with_a_hint(tmp_path):
    upright = photo(64, 48)
    stored_mask = np.zeros((64, 48), dtype=np.uint8)  # the stored (W, H) orientation
    folder_with_one_sample(tmp_path, image=upright, mask=stored_mask, rotated_jpeg=True)
    with pytest.raises(DataError, match=r"masks/s.png is 64x48 \(HxW\) but its image .*s.jpg is 48x64 \(height and "
                                        r"width swapped: both are read upright by their own EXIF orientation"):
        FolderDataset(tmp_path, "all")[0]


@pytest.mark.parametrize("content, problem", [
    (b"", "not an image file Pillow can read"),
    (b"this is not an image", "not an image file Pillow can read"),
    ("truncated", "truncated"),
])
def test_a_bad_image_file_is_one_error_naming_it(tmp_path, content, problem):
    path = tmp_path / "bad.png"
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(photo()).save(buffer, format="PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"cannot read image {path}: .*{problem}"):
        read_image(path)

"""add_legend: only the classes present, largest share first, the picture itself untouched."""

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.legend import add_legend, legend_rows

NAMES = ("road", "sky", "car", "tree", "person")
# Saturated colours: black text on white and its anti-aliasing only make greys (r == g == b), never these.
PALETTE = ((255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 0, 255), (0, 255, 255))


def photo(height, width, seed=0):
    """A random greyish picture (no palette colour in it)."""
    return Image.fromarray(np.random.default_rng(seed).integers(90, 110, (height, width, 3), dtype=np.uint8))


def panel_of(result, picture):
    """The legend panel: everything right of the picture, as (H, W, 3)."""
    return np.asarray(result)[:, picture.width:]


def colour_rows(panel, color):
    """The rows of ``panel`` where ``color`` appears."""
    return np.nonzero((panel == np.array(color, np.uint8)).all(-1).any(1))[0]


@pytest.mark.parametrize("height, width", [(360, 480), (32, 32), (20, 300)])
def test_lists_exactly_the_present_classes_and_keeps_the_picture(height, width):
    labels = np.zeros((height, width), np.int64)  # road
    labels[: height // 3] = 1  # sky
    labels[-2:, -3:] = 4  # a few person pixels
    labels[0, 0] = 255  # ignored
    picture = photo(height, width)
    result = add_legend(picture, labels, class_names=NAMES, palette=PALETTE, shares=True)
    assert result.mode == "RGB" and result.width > width and result.height >= height
    np.testing.assert_array_equal(np.asarray(result)[:height, :width], np.asarray(picture))
    panel = panel_of(result, picture)
    for index in (0, 1, 4):
        assert colour_rows(panel, PALETTE[index]).size > 4, NAMES[index]  # a swatch, not a stray pixel
    for index in (2, 3):
        assert colour_rows(panel, PALETTE[index]).size == 0, NAMES[index]
    assert picture.size == (width, height)  # the input is not modified


def test_rows_are_ordered_by_share_largest_first():
    labels = np.concatenate([np.full(10, 2), np.full(50, 0), np.full(25, 3), np.full(5, 1), np.full(40, 255)])
    labels = torch.from_numpy(labels.reshape(10, 13))  # a tensor works as an array does
    assert [index for index, _ in legend_rows(labels, num_classes=5)] == [0, 3, 2, 1]
    assert legend_rows(labels, num_classes=5)[0][1] == pytest.approx(50 / 90)  # of the labelled pixels
    picture = photo(120, 160)
    panel = panel_of(add_legend(picture, labels, class_names=NAMES, palette=PALETTE, shares=True), picture)
    tops = [colour_rows(panel, PALETTE[index]).min() for index in (0, 3, 2, 1)]
    assert tops == sorted(tops) and len(set(tops)) == 4
    assert colour_rows(panel, PALETTE[4]).size == 0


def test_min_share_drops_small_classes():
    labels = np.array([[0] * 98 + [1, 2]])
    assert [index for index, _ in legend_rows(labels, num_classes=5, min_share=0.05)] == [0]
    picture = photo(40, 100)
    panel = panel_of(add_legend(picture, labels, class_names=NAMES, palette=PALETTE, min_share=0.05), picture)
    assert colour_rows(panel, PALETTE[0]).size > 0 and colour_rows(panel, PALETTE[1]).size == 0


@pytest.mark.parametrize("labels", [np.full((32, 32), 255), np.zeros((0, 0), np.int64), np.full((8, 8), -1)])
def test_no_labelled_pixel_gives_a_panel_without_swatches(labels):
    picture = photo(32, 32)
    result = add_legend(picture, labels, class_names=NAMES, palette=PALETTE)
    assert result.width > 32
    np.testing.assert_array_equal(np.asarray(result)[:32, :32], np.asarray(picture))
    panel = panel_of(result, picture).astype(int)
    assert (panel.max(-1) == panel.min(-1)).all()  # only greys: the "no classes" note
    assert (panel < 128).any()  # ... which is drawn


def test_a_tall_legend_grows_the_canvas_below_a_small_picture():
    labels = np.arange(5).repeat(4).reshape(4, 5)  # every class, same share
    picture = photo(4, 5)
    result = add_legend(picture, labels, class_names=NAMES, palette=PALETTE, font_size=12)
    assert result.height >= 5 * 12  # five rows of at least the font's height
    panel = panel_of(result, picture)
    tops = [colour_rows(panel, color).min() for color in PALETTE]
    assert tops == sorted(tops)  # equal shares: class order
    below = np.asarray(result)[4:, :5]
    assert (below == 255).all()  # white under the picture


def test_refuses_a_palette_shorter_than_the_classes():
    with pytest.raises(ValueError, match="palette"):
        add_legend(photo(8, 8), np.zeros((8, 8), int), class_names=NAMES, palette=PALETTE[:3])

"""Convolutionalization amortizes patchwise evaluation (paper, section 3.1): the convolutionalized net's score map
against the naive baseline, the classifier run on every patch (``fcnseg.dense.patchwise``), cell by cell.

The rule (docs/paper.md): cell (i, j) of the two maps is the same function of the image when no layer pads, or
when every side on which a layer pads is a side the patch shares with the image (the conv net pads the image once,
the patchwise net pads every patch). Random weights make "the same function" "the same numbers", and anything else
different numbers.
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models

from fcnseg.convolutionalize import convolutionalize
from fcnseg.dense import patchwise

ALEXNET_STYLE_STRIDE = 16


def lenet() -> nn.Sequential:
    """LeNet-style, 1x28x28, no padding, total stride 4."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 120), nn.ReLU(), nn.Linear(120, 10),
    )


def alexnet_style(*, paddings: tuple = (0, 0, 0), ceil_mode: bool = False, native: int = 131) -> nn.Sequential:
    """AlexNet's layout in small: conv 11/4, max pool 3/2, conv 5, max pool 3/2, conv 3, two Linear; stride 16.

    ``paddings`` of the three convolutions (ints or (rows, cols) pairs). Unpadded, a 131x131 input is exactly one
    receptive field (3x3 conv features).
    """
    trunk = nn.Sequential(
        nn.Conv2d(3, 8, 11, stride=4, padding=paddings[0]), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=ceil_mode),
        nn.Conv2d(8, 12, 5, padding=paddings[1]), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=ceil_mode),
        nn.Conv2d(12, 16, 3, padding=paddings[2]), nn.ReLU(),
    )
    with torch.no_grad():
        flat = trunk(torch.zeros(1, 3, native, native)).numel()
    return nn.Sequential(*trunk, nn.Flatten(), nn.Linear(flat, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 7))


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    assert expected.std().item() > 1e-3 * scale > 0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)


def assert_every_cell_differs(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    per_cell = (actual - expected).abs().amax(dim=1)  # (N, rows, cols)
    assert (per_cell > 1e-3 * scale).all(), per_cell / scale


@torch.no_grad()
def test_lenet_map_equals_patchwise_at_every_cell():
    torch.manual_seed(0)
    classifier = lenet().eval()
    fcn = convolutionalize(classifier, input_size=(28, 28), in_channels=1).eval()
    image = torch.randn(2, 1, 47, 42)  # sides not multiples of the stride 4
    dense = patchwise(classifier, image, 4, input_size=(28, 28), batch_size=7)
    assert dense.shape == (2, 10, 5, 4)
    assert_close_scaled(fcn(image), dense)


@pytest.mark.parametrize("ceil_mode", [False, True])
@torch.no_grad()
def test_unpadded_alexnet_style_map_equals_patchwise_at_every_cell(ceil_mode):
    torch.manual_seed(1)
    classifier = alexnet_style(ceil_mode=ceil_mode).eval()
    fcn = convolutionalize(classifier, input_size=(131, 131)).eval()
    image = torch.randn(1, 3, 131 + 16 * 2 + 7, 131 + 16 * 3 + 5)  # (1, 3, 170, 184)
    dense = patchwise(classifier, image, ALEXNET_STYLE_STRIDE, input_size=(131, 131))
    assert dense.shape == (1, 7, 3, 4)
    scores = fcn(image)
    # Ceil-mode pools may add a last row/column of cells scored from partial windows, past the last whole patch.
    assert scores.shape == (1, 7, 3, 4) if not ceil_mode else scores.shape[-2] >= 3 and scores.shape[-1] >= 4
    assert_close_scaled(scores[..., :3, :4], dense)


@torch.no_grad()
def test_padded_net_agrees_only_where_the_patch_shares_the_padded_sides():
    """Convolutions padded along rows only: on an image of the native height every patch shares its top and bottom
    with the image, so every cell agrees; 32 rows taller, the patches' padded rows read real pixels in the conv net."""
    torch.manual_seed(2)
    classifier = alexnet_style(paddings=((2, 0), (2, 0), (1, 0)), native=131).eval()
    fcn = convolutionalize(classifier, input_size=(131, 131)).eval()
    wide = torch.randn(1, 3, 131, 131 + 16 * 3 + 9)
    assert_close_scaled(fcn(wide), patchwise(classifier, wide, ALEXNET_STYLE_STRIDE, input_size=(131, 131)))
    tall = torch.randn(1, 3, 131 + 32, 131 + 16 * 3 + 9)
    assert_every_cell_differs(fcn(tall), patchwise(classifier, tall, ALEXNET_STYLE_STRIDE, input_size=(131, 131)))


@torch.no_grad()
def test_first_layer_padding_is_the_whole_image_padded_once():
    """Padding only in the first layer: the conv net's map is the unpadded classifier slid over the padded image."""
    torch.manual_seed(3)
    pad = 4
    padded = alexnet_style(paddings=(pad, 0, 0), native=131 - 2 * pad).eval()
    unpadded = alexnet_style(native=131).eval()
    unpadded.load_state_dict(padded.state_dict())
    fcn = convolutionalize(padded, input_size=(131 - 2 * pad, 131 - 2 * pad)).eval()
    image = torch.randn(1, 3, 123 + 16 * 2 + 5, 123 + 16 * 3 + 3)
    scores = fcn(image)
    assert_close_scaled(scores, patchwise(unpadded, F.pad(image, [pad] * 4), ALEXNET_STYLE_STRIDE,
                                          input_size=(131, 131)))
    assert_every_cell_differs(scores, patchwise(padded, image, ALEXNET_STYLE_STRIDE, input_size=(123, 123)))


@torch.no_grad()
def test_torchvision_alexnet_agrees_at_the_native_size_and_nowhere_on_a_larger_image():
    """torchvision's AlexNet pads every convolution on every side: a 3x3 map from a 288 image has no cell whose
    patch shares all four sides with the image, and no cell agrees; at 224 the one cell is the whole image."""
    torch.manual_seed(4)
    classifier = models.alexnet(weights=None).eval()
    fcn = convolutionalize(classifier).eval()
    native = torch.randn(1, 3, 224, 224)
    assert_close_scaled(fcn(native), patchwise(classifier, native, 32).view(1, 1000, 1, 1))
    image = torch.randn(1, 3, 224 + 32 * 2, 224 + 32 * 2)
    dense = patchwise(classifier, image, 32, batch_size=4)
    scores = fcn(image)
    assert scores.shape == dense.shape == (1, 1000, 3, 3)
    assert_every_cell_differs(scores, dense)


def test_gradients_reach_the_image_and_the_weights():
    torch.manual_seed(5)
    classifier = lenet()
    image = torch.randn(1, 1, 36, 32, requires_grad=True)
    patchwise(classifier, image, 4, input_size=(28, 28), batch_size=3).sum().backward()
    assert image.grad.abs().sum() > 0 and classifier[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("shape", "stride", "match"), [((1, 28, 28), 4, "N, C, H, W"), ((1, 1, 20, 40), 4, "holds no"),
                                                      ((1, 1, 28, 28), 0, "positive")])
def test_bad_arguments_raise(shape, stride, match):
    with pytest.raises(ValueError, match=match):
        patchwise(lenet(), torch.zeros(shape), stride, input_size=(28, 28))

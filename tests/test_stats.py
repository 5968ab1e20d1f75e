"""Table 1 measured from the modules (fcnseg.stats) against the paper's figures and independent estimates;
and the border behaviour of the fixed bilinear upsampling (section 3.3)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.convolutionalize import convolutionalize
from fcnseg.models.layers import BilinearUpsample
from fcnseg.models.registry import build_model
from fcnseg.stats import conv_layers, count_parameters, forward_seconds, output_stride, receptive_field

# The paper's Table 1: receptive field, conv. layers, parameters (millions), max stride.
PAPER_TABLE1 = {
    "fcn-alexnet": (355, 8, 57, 32),
    "fcn32s": (404, 16, 134, 32),
    "fcn-googlenet": (907, 22, 6, 32),
}


def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):  # geometry and counts need no weights
        return build_model(name, num_classes=21)


@pytest.mark.parametrize("name", ["fcn-alexnet", "fcn-alexnet-tv", "fcn32s"])
def test_alexnet_and_vgg16_match_the_paper(name):
    field, layers, millions, stride = PAPER_TABLE1["fcn-alexnet" if name.startswith("fcn-alexnet") else name]
    model = meta_model(name)
    assert receptive_field(model) == field
    assert conv_layers(model) == layers
    assert round(count_parameters(model) / 1e6) == millions
    assert output_stride(model) == stride


def compose(layers: list[tuple[int, int]]) -> int:
    """Receptive field of a chain of (kernel, stride) layers: each widens it by (kernel - 1) input strides."""
    field, jump = 1, 1
    for kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


def googlenet_chain(*, branch_kernel: int, pool4: int, average_pool: int) -> list[tuple[int, int]]:
    """(kernel, stride) along GoogLeNet's widest path: each inception's widest branch is a 1x1 then a k x k."""
    inception = [(1, 1), (branch_kernel, 1)]
    return [(7, 2), (3, 2), (1, 1), (3, 1), (3, 2), *inception * 2, (3, 2), *inception * 5, (pool4, 2),
            *inception * 2, (average_pool, 1), (1, 1)]


def test_googlenet_matches_the_paper_but_the_field_of_torchvision_layout():
    model = meta_model("fcn-googlenet")
    _, layers, millions, stride = PAPER_TABLE1["fcn-googlenet"]
    measured = (conv_layers(model), round(count_parameters(model) / 1e6), output_stride(model))
    assert measured == (layers, millions, stride)
    # torchvision's inception "5x5" branches are 3x3 and its pool4 2x2; the average pool is discarded: 379 pixels.
    assert receptive_field(model) == compose(googlenet_chain(branch_kernel=3, pool4=2, average_pool=1)) == 379
    # The paper's 907 is the original GoogLeNet (5x5 branches, 3x3 pool4) with its 7x7 average pool counted.
    assert compose(googlenet_chain(branch_kernel=5, pool4=3, average_pool=7)) == 907


def test_plain_convolutionalized_net():
    torch.manual_seed(0)
    lenet = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 10))
    fcn = convolutionalize(lenet, input_size=(28, 28), in_channels=1)
    assert (receptive_field(fcn), output_stride(fcn), conv_layers(fcn)) == (28, 4, 4)
    assert count_parameters(fcn) == sum(p.numel() for p in lenet.parameters())
    assert forward_seconds(fcn, height=40, width=40, repeats=1, warmup=0) > 0


def test_fixed_upsampling_is_not_counted():
    fixed = meta_model("fcn32s")
    with torch.device("meta"):
        learned = build_model("fcn32s", num_classes=21, learnable_upsampling=True)
    assert count_parameters(learned) - count_parameters(fixed) == 21 * 21 * 64 * 64


@pytest.mark.parametrize("factor", [2, 4, 8, 32])
def test_bilinear_upsampling_border_interpolates_against_zero_cells(factor):
    """Interior: the deconvolution is bilinear interpolation (tests/models/test_layers.py). Border: it is interpolation
    against a ring of zero cells, so it fades to zero past the outer cell centres where F.interpolate clamps."""
    torch.manual_seed(factor)
    scores = torch.randn(1, 3, 3, 4)
    with torch.no_grad():
        ours = BilinearUpsample(3, stride=factor, kernel_size=2 * factor)(scores)  # (1, 3, f * 4, f * 5)
    zero_ring = F.interpolate(F.pad(scores, [1, 1, 1, 1]), scale_factor=factor, mode="bilinear", align_corners=False)
    shift = factor // 2  # cell i sits at f * i + f - 0.5 in ours, at f * (i + 1) + (f - 1) / 2 in zero_ring
    expected = zero_ring[..., shift : shift + ours.shape[-2], shift : shift + ours.shape[-1]]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    # Down to the first cell row's centre (output row f - 0.5) only that row reaches: row o is row f - 1 scaled by
    # (o + 0.5) / (f - 0.5), every class alike. It keeps the edge cells' arg max and fades towards zero, where
    # F.interpolate would repeat the edge row.
    weights = ((torch.arange(factor) + 0.5) / (factor - 0.5)).view(-1, 1)  # (f, 1)
    torch.testing.assert_close(ours[..., :factor, :], weights * ours[..., factor - 1 : factor, :], atol=1e-6, rtol=1e-5)
    assert torch.equal(ours[..., :factor, :].argmax(1), ours[..., factor - 1 : factor, :].expand_as(
        ours[..., :factor, :]).argmax(1))

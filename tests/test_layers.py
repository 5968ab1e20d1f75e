"""Upsampling is backwards strided convolution: the bilinear kernel against independent formulas."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models.layers import BilinearUpsample, bilinear_kernel, crop_like


def test_bilinear_kernel_matches_hand_values():
    # k=4 (factor 2): profile 1 - |t - 1.5| / 2 = [0.25, 0.75, 0.75, 0.25]
    expected = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(bilinear_kernel(4), torch.outer(expected, expected))
    # k=3 (odd, factor 2): centre 1, profile [0.5, 1, 0.5]
    expected = torch.tensor([0.5, 1.0, 0.5])
    assert torch.allclose(bilinear_kernel(3), torch.outer(expected, expected))


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
def test_upsampling_a_ramp_reproduces_it_in_the_interior(factor):
    rows, cols = 5, 6
    i = torch.arange(rows, dtype=torch.float64).view(rows, 1)
    j = torch.arange(cols, dtype=torch.float64).view(1, cols)
    ramp = (0.7 * i - 1.3 * j + 2.0).float().expand(2, 1, rows, cols).reshape(1, 2, rows, cols)
    up = BilinearUpsample(2, stride=factor, kernel_size=2 * factor)
    with torch.no_grad():
        out = up(ramp)[0, 0].double()
    # Cell i sits at output coordinate f * i + f - 0.5 (the kernel's centre), so the interior
    # of the output is the ramp evaluated at (o - f + 0.5) / f.
    o = torch.arange(out.shape[0], dtype=torch.float64)
    row_pos = ((o - factor + 0.5) / factor).view(-1, 1)
    col_pos = ((torch.arange(out.shape[1], dtype=torch.float64) - factor + 0.5) / factor).view(1, -1)
    expected = 0.7 * row_pos - 1.3 * col_pos + 2.0
    interior = (slice(factor, factor * rows), slice(factor, factor * cols))
    assert torch.allclose(out[interior], expected[interior], atol=1e-5)
    # ... and at the border, where only one input cell reaches, the value falls off.
    assert not torch.allclose(out[0, factor:-factor], expected[0, factor:-factor], atol=1e-3)


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
def test_upsampling_equals_interpolate_shifted_by_one_factor(factor):
    torch.manual_seed(factor)
    scores = torch.randn(1, 3, 4, 5)
    up = BilinearUpsample(3, stride=factor, kernel_size=2 * factor)
    with torch.no_grad():
        ours = up(scores)
    # F.interpolate(align_corners=False) puts cell i at output f * i + (f - 1) / 2; ours at f * i + f - 0.5,
    # that is f / 2 pixels further on: ours[o] == theirs[o - f / 2] wherever neither touches a border.
    theirs = F.interpolate(scores, scale_factor=factor, mode="bilinear", align_corners=False)
    shift = factor // 2
    # Interior: away from the borders where interpolate clamps and the deconvolution fades.
    ours_interior = ours[..., factor + shift : 4 * factor - factor + shift, factor + shift : 5 * factor - factor + shift]
    theirs_interior = theirs[..., factor : 3 * factor, factor : 4 * factor]
    assert torch.allclose(ours_interior, theirs_interior, atol=1e-5)


def test_fixed_and_learnable_flags():
    assert not BilinearUpsample(3, stride=2, kernel_size=4).weight.requires_grad
    assert BilinearUpsample(3, stride=2, kernel_size=4, learnable=True).weight.requires_grad


def test_upsampling_keeps_channels_apart():
    up = BilinearUpsample(3, stride=2, kernel_size=4)
    x = torch.zeros(1, 3, 3, 3)
    x[0, 1, 1, 1] = 1.0
    with torch.no_grad():
        out = up(x)
    assert out[0, 0].abs().sum() == 0 and out[0, 2].abs().sum() == 0
    assert out[0, 1].sum() == pytest.approx(4.0)  # a bilinear kernel for factor 2 sums to f^2


def test_crop_like_rejects_too_small_maps():
    with pytest.raises(ValueError, match="cannot crop"):
        crop_like(torch.zeros(1, 1, 10, 10), 5, 6, 6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("padding, stride, dilation", [(0, 1, 1), (3, 1, 1), (2, 2, 1), (4, 1, 2)])
def test_unfold_conv_equals_the_convolution_and_its_gradients(channels_last, padding, stride, dilation):
    from fcnseg.models.layers import UnfoldConv2d

    torch.manual_seed(0)
    fast = UnfoldConv2d(6, 5, 7, padding=padding, stride=stride, dilation=dilation)
    conv = nn.Conv2d(6, 5, 7, padding=padding, stride=stride, dilation=dilation)
    conv.load_state_dict(fast.state_dict())  # same keys and shapes: reference weights load unchanged
    x = torch.randn(2, 6, 17, 23)
    if channels_last:
        fast, x = fast.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x_fast, x_conv = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fast, out_conv = fast(x_fast), conv(x_conv)
    torch.testing.assert_close(out_fast, out_conv, rtol=1e-5, atol=1e-5)
    out_fast.square().sum().backward()
    out_conv.square().sum().backward()
    torch.testing.assert_close(x_fast.grad, x_conv.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-4)


def test_unfold_large_convolutions_swaps_fc6_only_and_shares_its_parameters():
    from fcnseg.models import FCN32s, FCNAlexNet
    from fcnseg.models.layers import UnfoldConv2d, unfold_large_convolutions

    for model in (FCN32s(num_classes=3), FCNAlexNet(num_classes=3)):
        weight = model.fc6.weight
        keys = list(model.state_dict())
        assert unfold_large_convolutions(model) == 1
        assert type(model.fc6) is UnfoldConv2d and model.fc6.weight is weight
        assert list(model.state_dict()) == keys
        assert not any(type(m) is UnfoldConv2d for name, m in model.named_modules() if name != "fc6")

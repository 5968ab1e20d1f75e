"""Upsampling is backwards strided convolution: the bilinear kernel against independent formulas."""

import pytest
import torch
import torch.nn.functional as F

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

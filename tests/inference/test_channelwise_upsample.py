"""fcnseg.inference.channelwise_upsample: the grouped form equals the full diagonal transposed convolution."""

import pytest
import torch
from torch import nn

from fcnseg.inference.channelwise_upsample import ChannelwiseUpsample, channelwise_upsampling
from fcnseg.models.layers import BilinearUpsample


@pytest.mark.parametrize("kernel_size, stride", [(4, 2), (16, 8), (15, 8)])
def test_channelwise_upsampling_matches_the_full_transposed_convolution(kernel_size, stride):
    model = nn.Sequential(BilinearUpsample(5, stride=stride, kernel_size=kernel_size))
    x = torch.randn(2, 5, 7, 9)
    with torch.no_grad():
        expected = model(x)
        assert channelwise_upsampling(model) == 1 and isinstance(model[0], ChannelwiseUpsample)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # upsampling stays in float32 under autocast
            assert model(x).dtype == torch.float32


def test_learned_upsampling_with_cross_channel_weights_is_left_alone():
    upsample = BilinearUpsample(3, stride=2, kernel_size=4, learnable=True)
    with torch.no_grad():
        upsample.weight[0, 1] += 0.1
    model = nn.Sequential(upsample)
    assert channelwise_upsampling(model) == 0 and model[0] is upsample

"""fcnseg.inference.unfold_fc: fc6 as unfold + GEMM equals the convolution, and swaps only fc6."""

import pytest
import torch
from torch import nn

from fcnseg.inference.unfold_fc import UnfoldConv2d, unfold_large_convolutions
from fcnseg.models import FCN32s, FCNAlexNet


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("padding, stride, dilation", [(0, 1, 1), (3, 1, 1), (2, 2, 1), (4, 1, 2)])
def test_unfold_conv_equals_the_convolution_and_its_gradients(channels_last, padding, stride, dilation):
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
    for model in (FCN32s(num_classes=3), FCNAlexNet(num_classes=3)):
        weight = model.fc6.weight
        keys = list(model.state_dict())
        assert unfold_large_convolutions(model) == 1
        assert type(model.fc6) is UnfoldConv2d and model.fc6.weight is weight
        assert list(model.state_dict()) == keys
        assert not any(type(m) is UnfoldConv2d for name, m in model.named_modules() if name != "fc6")

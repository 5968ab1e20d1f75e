"""fcnseg.inference.onednn: convolutions fused with their ReLU give the plain path's outputs."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.inference.onednn import ConvReLU2d, PackedWeights, fuse_conv_relus, onednn_applies
from fcnseg.models import FCN8s, FCNAlexNet


@pytest.mark.parametrize("groups, stride, padding", [(1, 1, 1), (2, 1, 2), (1, 4, 100), (1, 1, 0)])
def test_conv_relu_matches_relu_of_the_convolution(groups, stride, padding):
    torch.manual_seed(groups + stride)
    conv = ConvReLU2d(4, 6, 3, stride=stride, padding=padding, groups=groups)
    x = torch.randn(2, 4, 13, 17).contiguous(memory_format=torch.channels_last)
    small = x[..., :9, :11]
    with torch.no_grad():
        expected = F.conv2d(x, conv.weight, conv.bias, stride, padding, 1, groups).clamp(min=0)
        expected_small = F.conv2d(small, conv.weight, conv.bias, stride, padding, 1, groups).clamp(min=0)
    with torch.inference_mode():  # oneDNN, packed weights: at two sizes, a packed copy for each
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv(small), expected_small, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    assert len(conv.packed) == 2
    out = conv(x.requires_grad_())  # autograd: the plain path, differentiable
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_weights_are_packed_once_per_input_shape_and_the_copies_bounded():
    """oneDNN's packed layout depends on the input shape (batch size and image size): each shape gets its own
    packed copy, the most recently used ``MAX_ENTRIES`` kept, and every one gives the plain outputs."""
    torch.manual_seed(0)
    conv = ConvReLU2d(4, 6, 3, padding=1)
    shapes = [(1, 4, 9, 11), (2, 4, 9, 11), (1, 4, 12, 7)]
    with torch.inference_mode():
        for shape in shapes + shapes:
            x = torch.randn(*shape)
            torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1).clamp(min=0),
                                       rtol=1e-5, atol=1e-5)
        assert sorted(conv.packed) == sorted((torch.float32, shape) for shape in shapes)
        for batch in range(3, 3 + PackedWeights.MAX_ENTRIES):
            conv(torch.randn(batch, 4, 5, 6))
    assert list(conv.packed) == [(torch.float32, (batch, 4, 5, 6)) for batch in range(3, 3 + PackedWeights.MAX_ENTRIES)]


def test_onednn_is_left_to_autocast_float32_inputs():
    x, weight = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 1, 1)
    with torch.inference_mode():
        assert onednn_applies(x, weight)
        assert not onednn_applies(x.double(), weight.double())
        assert not onednn_applies(x, weight.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn_applies(x, weight)  # autocast must lower it: the plain path
            assert onednn_applies(x.bfloat16(), weight.bfloat16())
    assert not onednn_applies(x, weight)  # autograd on


def randomized(model):
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and not isinstance(module, nn.ConvTranspose2d):
            nn.init.normal_(module.weight, std=(2 / module.weight[0].numel()) ** 0.5)
            nn.init.uniform_(module.bias, -0.1, 0.1)
    return model.eval()


@pytest.mark.parametrize("build, pairs", [(lambda: FCN8s(num_classes=3, layout="compact"), 15),
                                          (lambda: FCNAlexNet(num_classes=3), 7)])
def test_fusing_an_fcn_keeps_its_outputs_and_parameters(build, pairs):
    model = randomized(build())
    fused = copy.deepcopy(model)
    assert fuse_conv_relus(fused) == pairs  # every conv + relu pair (fc6 and fc7 included, as plain convs here)
    assert not any(isinstance(m, nn.ReLU) for m in fused.modules())
    x = torch.randn(1, 3, 67, 93)
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert fused.state_dict().keys() == model.state_dict().keys()
    assert fuse_conv_relus(fused) == 0  # nothing left to fuse


def test_other_models_are_left_alone():
    class ConvThenReLU(nn.Module):  # the naming alone does not make a model fusable
        def __init__(self):
            super().__init__()
            self.conv1, self.relu1 = nn.Conv2d(3, 4, 3), nn.ReLU()

        def forward(self, x):
            return self.relu1(self.conv1(x))

    model = ConvThenReLU()
    assert fuse_conv_relus(model) == 0 and type(model.conv1) is nn.Conv2d

"""fcnseg.inference.onednn on EfficientNet-Lite: the fused layers give the plain outputs."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.inference import bf16_supported, fold_batch_norms, inference_model
from fcnseg.inference.onednn import FusedEfficientNetLite, FusedSameConv2d, fuse_lite_networks
from fcnseg.models.efficientnet_lite import EfficientNetLite, SameConv2d
from fcnseg.models.layers import BilinearUpsample

# TensorFlow "same" padding (before, after) of one side, written out: (size parity, kernel, stride) -> pads.
TF_SAME_PADS = {("even", 1, 1): (0, 0), ("odd", 1, 1): (0, 0), ("even", 3, 2): (0, 1), ("even", 5, 2): (1, 2), ("odd", 3, 2): (1, 1), ("odd", 5, 2): (2, 2),
                ("even", 3, 1): (1, 1), ("odd", 3, 1): (1, 1), ("even", 5, 1): (2, 2), ("odd", 5, 1): (2, 2)}


def conv_with_bias(in_channels, out_channels, kernel, stride, groups, seed):
    torch.manual_seed(seed)
    conv = SameConv2d(in_channels, out_channels, kernel, stride=stride, groups=groups)
    conv.bias = nn.Parameter(torch.randn(out_channels))
    return conv


def expected_output(conv, x, *, relu6, residual=None):
    (top, bottom), (left, right) = [TF_SAME_PADS[("even" if size % 2 == 0 else "odd", conv.kernel_size[0],
                                                  conv.stride[0])] for size in x.shape[-2:]]
    out = F.conv2d(F.pad(x, [left, right, top, bottom]), conv.weight, conv.bias, conv.stride, groups=conv.groups)
    out = out.clamp(0, 6) if relu6 else out
    return out if residual is None else out + residual


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(16, 24), (15, 21), (16, 21), (15, 24)])
@pytest.mark.parametrize("depthwise", [True, False])
def test_fused_same_conv_matches_padded_convolution(kernel, stride, size, depthwise):
    channels = 6
    conv = conv_with_bias(channels, channels, kernel, stride, channels if depthwise else 1, seed=kernel + stride)
    x = torch.randn(2, channels, *size).contiguous(memory_format=torch.channels_last) * 4
    fused = FusedSameConv2d(conv, relu6=True)
    with torch.no_grad():
        expected = expected_output(conv, x, relu6=True)
    with torch.inference_mode():  # oneDNN's fused call on the CPU
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
    with torch.enable_grad():  # the plain path (autograd on): F.conv2d then ReLU6
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_fused_projection_adds_the_residual_without_activation():
    conv = conv_with_bias(8, 4, 1, 1, 1, seed=3)
    x, residual = torch.randn(1, 8, 10, 14), torch.randn(1, 4, 10, 14)
    fused = FusedSameConv2d(conv, relu6=False)
    with torch.no_grad():
        expected = expected_output(conv, x, relu6=False, residual=residual)
    for context in (torch.inference_mode(), torch.enable_grad()):
        with context:
            torch.testing.assert_close(fused(x, residual=residual), expected, rtol=1e-5, atol=1e-5)
    assert expected.min() < 0  # no ReLU6 hid a sign error


def randomized_lite() -> EfficientNetLite:
    torch.manual_seed(0)
    net = EfficientNetLite(variant="lite0")
    net.drop_classifier()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so folding matters
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def test_fused_lite_features_match_the_plain_network():
    net = randomized_lite()
    folded, _ = fold_batch_norms(net)
    fused = FusedEfficientNetLite(folded)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        for got, expected in zip(fused.forward_pyramid(x), net.forward_pyramid(x)):  # f4, f8, f16, f32
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        torch.testing.assert_close(fused(x), net(x), rtol=1e-4, atol=1e-4)


def test_fusing_needs_folded_batch_norms():
    net = randomized_lite()
    with pytest.raises(ValueError, match="fold the batch norms"):
        FusedEfficientNetLite(net)
    holder = nn.Sequential(net)
    assert fuse_lite_networks(holder) == 0 and holder[0] is net
    folded_holder = nn.Sequential(fold_batch_norms(net)[0])
    assert fuse_lite_networks(folded_holder) == 1 and isinstance(folded_holder[0], FusedEfficientNetLite)


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no oneDNN bf16 kernels on this CPU")
def test_fused_lite_in_bf16_stays_close():
    net = randomized_lite()
    fused = FusedEfficientNetLite(fold_batch_norms(net)[0]).to(torch.bfloat16)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        got, expected = fused.forward_features(x)[-1], net.forward_features(x)[-1]
    assert got.dtype == torch.bfloat16
    assert ((got.float() - expected).abs().max() / expected.abs().max()).item() < 5e-2


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no oneDNN bf16 kernels on this CPU")
def test_bf16_variant_of_a_lite_fcn_computes_the_backbone_in_bf16(fake_timer):
    from fcnseg.models import build_model

    torch.manual_seed(0)
    model = build_model("fcn8s-lite0", num_classes=4).eval()
    for module in model.modules():  # score layers start at zero: give them weights
        if isinstance(module, nn.Conv2d) and module.weight.shape[0] == 4 and not isinstance(module, BilinearUpsample):
            nn.init.normal_(module.weight, std=0.1)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        expected = model(x)
    fast = inference_model(model, x, bf16=True, timer=fake_timer())  # every step faster
    assert fast.steps[-1] == "bf16" and "fuse_lite" in fast.steps
    lite = next(m for m in fast.modules() if isinstance(m, FusedEfficientNetLite))
    assert lite.stem.weight.dtype == torch.bfloat16
    float32 = next(m for m in inference_model(model, x, timed=False).modules() if isinstance(m, FusedEfficientNetLite))
    assert float32.stem.weight.dtype == torch.float32  # the float32 module is a separate copy
    got = fast(x)
    assert got.dtype == torch.float32
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 5e-2


def test_packed_weights_serve_other_sizes_and_are_dropped_on_conversion():
    import copy

    conv = conv_with_bias(16, 32, 1, 1, 1, seed=5)
    fused = FusedSameConv2d(conv, relu6=True)
    with torch.inference_mode():
        for size in ((12, 15), (24, 30), (5, 7), (24, 30)):  # packed for each size at its first call
            x = torch.randn(2, 16, *size).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(fused(x), expected_output(conv, x, relu6=True), rtol=1e-5, atol=1e-5)
    assert len(fused.packed) == 3
    assert len(copy.deepcopy(fused).packed) == 0  # opaque packed tensors are not copied
    fused.double().float()  # conversions drop the stale packed copies
    assert len(fused.packed) == 0

"""Contract tests over every model: output size, alignment, fixed/learned upsampling, staged training."""

import pytest
import torch
from torch import nn

from fcnseg.models import FCN8s, FCN8sAtOnce, FCN16s, FCN32s, FCNAlexNet, build_model, list_models, upsampling_layers

SIZES = [(1, 1), (5, 17), (31, 32), (33, 64), (100, 75)]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_model(name, num_classes=3).eval() for name in list_models(standard_only=True)}


@pytest.mark.parametrize("name", list_models(standard_only=True))
def test_output_has_input_size(models, name):
    model = models[name]
    with torch.no_grad():
        for height, width in SIZES:
            out = model(torch.randn(1, 3, height, width))
            assert out.shape == (1, 3, height, width), (name, height, width)


@pytest.mark.parametrize("name", ["fcn8s", "fcn-alexnet"])
def test_backward_reaches_the_trunk(models, name):
    model = build_model(name, num_classes=2).train()
    # Score layers start at zero, so give them weights for gradients to flow down to the trunk.
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d) and layer.out_channels == 2:
            nn.init.normal_(layer.weight, std=0.01)
    out = model(torch.randn(2, 3, 37, 41))
    loss = nn.functional.cross_entropy(out, torch.randint(0, 2, (2, 37, 41)))
    loss.backward()
    first_conv = model.conv1_1 if hasattr(model, "conv1_1") else model.conv1
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_score_layers_start_at_zero_and_upsampling_is_fixed_by_default():
    model = FCN8s(num_classes=4)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert getattr(model, name).weight.abs().sum() == 0
    assert all(not m.weight.requires_grad for m in upsampling_layers(model))
    learned = FCN8s(num_classes=4, learnable_upsampling=True)
    assert all(m.weight.requires_grad for m in upsampling_layers(learned))
    assert len(upsampling_layers(learned)) == 3


def test_at_once_scales_the_skips():
    torch.manual_seed(1)
    plain, at_once = FCN8s(num_classes=2).eval(), FCN8sAtOnce(num_classes=2).eval()
    at_once.load_state_dict(plain.state_dict())
    nn.init.normal_(plain.score_pool3.weight)
    at_once.score_pool3.weight.data.copy_(plain.score_pool3.weight.data * 1e4)  # undo the 0.0001 scale
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(plain(x), at_once(x), rtol=1e-4, atol=1e-5)


def test_staged_models_copy_shared_layers_and_zero_new_ones():
    torch.manual_seed(2)
    fcn32s = FCN32s(num_classes=5)
    nn.init.normal_(fcn32s.score_fr.weight)
    fcn16s = FCN16s.from_fcn32s(fcn32s)
    assert torch.equal(fcn16s.conv3_2.weight, fcn32s.conv3_2.weight)
    assert torch.equal(fcn16s.score_fr.weight, fcn32s.score_fr.weight)
    assert fcn16s.score_pool4.weight.abs().sum() == 0
    nn.init.normal_(fcn16s.score_pool4.weight)
    fcn8s = FCN8s.from_fcn16s(fcn16s)
    assert torch.equal(fcn8s.score_pool4.weight, fcn16s.score_pool4.weight)
    assert fcn8s.score_pool3.weight.abs().sum() == 0
    assert torch.equal(fcn8s.upscore2.weight, fcn16s.upscore2.weight)


def test_alexnet_layouts():
    caffenet = FCNAlexNet(num_classes=3)
    assert caffenet.conv2.groups == 2 and isinstance(caffenet.norm1, nn.LocalResponseNorm)
    assert tuple(caffenet.conv2.weight.shape) == (256, 48, 5, 5)  # CaffeNet's grouped conv2 blob
    tv = FCNAlexNet(num_classes=3, layout="torchvision")
    assert tv.conv2.groups == 1 and tv.conv1.out_channels == 64
    with pytest.raises(ValueError, match="layout"):
        FCNAlexNet(num_classes=3, layout="googlenet")


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'fcn4s'"):
        build_model("fcn4s", num_classes=2)

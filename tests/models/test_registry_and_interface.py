"""The package's architecture rules: one ModelSpec per name, models/ importing nothing above it, and the one
interface (``fcnseg.models.interface``) through which families state their geometry and rewrite points."""

import ast
from pathlib import Path

import pytest
import torch

from fcnseg.models import (
    MODEL_SPECS,
    CoarseScoring,
    ConvBatchNormPairs,
    ConvReLUPairs,
    build_model,
    list_models,
    model_spec,
)
from fcnseg.models.efficientnet_lite import EfficientNetLite, MBConvBlock

MODELS_DIR = Path(__file__).resolve().parents[2] / "fcnseg" / "models"
FORBIDDEN = ("fcnseg.inference", "fcnseg.dense", "fcnseg.training", "fcnseg.data", "fcnseg.serve", "fcnseg.cli",
             "fcnseg.checkpoint", "fcnseg.predict", "fcnseg.evaluate", "fcnseg.export", "fcnseg.stats")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_models_import_nothing_from_the_layers_above(path):
    above = [name for name in imported_modules(path) if name.startswith(FORBIDDEN)]
    assert not above, f"{path.name} imports {above}"


def test_every_spec_builds_its_model_with_its_own_input_channels():
    for name, spec in MODEL_SPECS.items():
        with torch.device("meta"):
            model = build_model(name, num_classes=3)
        assert model.in_channels == spec.in_channels, name
        assert bool(spec.heads) == hasattr(model, "head_names"), name
        assert spec.normalization in ("caffe", "imagenet", "lite", "caffe-siftflow", "caffe-nyud"), name


def test_standard_models_are_rgb_single_output_and_the_rest_are_not():
    standard = list_models(standard_only=True)
    assert "fcn8s-lite0" in standard and "fcn8s-siftflow" not in standard and "fcn32s-nyud-rgbd" not in standard
    assert set(list_models()) == set(MODEL_SPECS)
    with pytest.raises(ValueError, match="unknown model 'fcn9s'"):
        model_spec("fcn9s")


@pytest.mark.parametrize("name", list_models(standard_only=True))
def test_every_standard_model_states_its_coarse_geometry(name):
    with torch.device("meta"):
        model = build_model(name, num_classes=3)
    assert isinstance(model, CoarseScoring)
    assert model.output_stride in (4, 8, 16, 32)
    assert isinstance(model.score_cell_centre, float)


def test_rewrite_points_are_stated_by_the_families_themselves():
    vgg, alexnet = build_model("fcn8s", num_classes=2), build_model("fcn-alexnet", num_classes=2)
    for model in (vgg, alexnet):
        assert isinstance(model, ConvReLUPairs)
        for conv, relu in model.conv_relu_pairs():
            assert isinstance(getattr(model, conv), torch.nn.Conv2d) and isinstance(getattr(model, relu), torch.nn.ReLU)
    assert len(vgg.conv_relu_pairs()) == 15 and len(alexnet.conv_relu_pairs()) == 7
    net = EfficientNetLite(variant="lite0")
    blocks = [m for m in net.modules() if isinstance(m, MBConvBlock)]
    assert isinstance(net, ConvBatchNormPairs) and all(isinstance(b, ConvBatchNormPairs) for b in blocks)
    pairs = len(net.conv_bn_pairs()) + sum(len(b.conv_bn_pairs()) for b in blocks)
    assert pairs == sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # every norm is named once

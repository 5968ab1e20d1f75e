"""convolutionalize: the conv net reproduces the classifier at its native size and slides it over bigger inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models

from fcnseg.convolutionalize import convolutionalize


def lenet(*, batch_norm: bool = False) -> nn.Sequential:
    """A LeNet-style classifier for 1x28x28 images, no padding, total stride 4."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.BatchNorm2d(6) if batch_norm else nn.Identity(),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120),
        nn.ReLU(),
        nn.Linear(120, 10),
    )


class TinyVGG(nn.Module):
    """torchvision's VGG layout (features, avgpool, classifier) at toy size: 16x16 input -> 4x4 features."""

    def __init__(self, *, pool_size: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(nn.Linear(4 * pool_size * pool_size, 5))


def assert_matches_logits(scores: torch.Tensor, logits: torch.Tensor) -> None:
    """Random-init logits are small: require them to vary, and compare relative to their magnitude."""
    scale = logits.abs().max().item()
    assert logits.std().item() > 1e-3 * scale > 0
    torch.testing.assert_close(scores, logits, rtol=1e-4, atol=1e-4 * scale)


@pytest.fixture(scope="module", params=["vgg16", "alexnet", "vgg11_bn"])
def torchvision_pair(request) -> tuple[nn.Module, nn.Sequential]:
    torch.manual_seed(0)
    classifier = getattr(models, request.param)(weights=None).eval()
    return classifier, convolutionalize(classifier).eval()


@torch.no_grad()
def test_native_size_map_equals_logits(torchvision_pair):
    classifier, fcn = torchvision_pair
    image = torch.randn(1, 3, 224, 224)
    scores = fcn(image)
    assert scores.shape == (1, 1000, 1, 1)
    assert_matches_logits(scores.flatten(1), classifier(image))


@pytest.mark.parametrize(("height", "width", "map_size"), [(288, 320, (3, 4)), (256, 224, (2, 1))])
@torch.no_grad()
def test_bigger_input_gives_stride_32_map(torchvision_pair, height, width, map_size):
    _, fcn = torchvision_pair
    assert fcn(torch.randn(1, 3, height, width)).shape == (1, 1000, *map_size)


@torch.no_grad()
def test_identity_avgpool_is_dropped():
    torch.manual_seed(0)
    classifier = TinyVGG(pool_size=4).eval()  # 16x16 input -> 4x4 features: avgpool(4) is the identity there
    fcn = convolutionalize(classifier, input_size=(16, 16)).eval()
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in fcn.modules())
    image = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fcn(image).flatten(1), classifier.classifier(classifier.features(image).flatten(1)))
    assert fcn(torch.randn(1, 3, 32, 48)).shape == (1, 5, 5, 9)


def test_shares_no_parameters(torchvision_pair):
    classifier, fcn = torchvision_pair
    original = {p.data_ptr() for p in classifier.parameters()}
    assert not original & {p.data_ptr() for p in fcn.parameters()}


@torch.no_grad()
def test_map_cells_are_the_classifier_on_shifted_crops():
    torch.manual_seed(0)
    classifier = lenet().eval()
    fcn = convolutionalize(classifier, input_size=(28, 28), in_channels=1).eval()
    native = torch.randn(3, 1, 28, 28)
    assert fcn(native).shape == (3, 10, 1, 1)
    torch.testing.assert_close(fcn(native).flatten(1), classifier(native), atol=1e-5, rtol=1e-5)

    stride, rows, cols = 4, 6, 4
    image = torch.randn(2, 1, 28 + stride * (rows - 1), 28 + stride * (cols - 1))  # (2, 1, 48, 40)
    scores = fcn(image)
    assert scores.shape == (2, 10, rows, cols)
    assert scores.abs().max() > 1e-2
    for i in range(rows):
        for j in range(cols):
            crop = image[:, :, stride * i : stride * i + 28, stride * j : stride * j + 28]
            torch.testing.assert_close(scores[:, :, i, j], classifier(crop), atol=1e-5, rtol=1e-5)


def test_original_classifier_unchanged():
    torch.manual_seed(0)
    classifier = lenet(batch_norm=True).train()  # in train mode a forward would update BatchNorm's running stats
    before = {name: value.clone() for name, value in classifier.state_dict().items()}
    fcn = convolutionalize(classifier, input_size=(28, 28), in_channels=1)

    assert classifier.training and fcn.training
    for name, value in classifier.state_dict().items():
        assert torch.equal(value, before[name]), name
    torch.testing.assert_close(fcn.features[1].running_mean, before["1.running_mean"], atol=0, rtol=0)
    with torch.no_grad():
        for parameter in fcn.parameters():
            parameter.add_(1.0)
    for name, value in classifier.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(("height", "width", "map_size"), [(224, 224, (7, 7)), (320, 288, (10, 9))])
@torch.no_grad()
def test_resnet_global_pool_head_map_mean_equals_logits(height, width, map_size):
    torch.manual_seed(0)
    classifier = models.resnet18(weights=None).eval()
    fcn = convolutionalize(classifier).eval()
    image = torch.randn(1, 3, height, width)
    scores = fcn(image)
    assert scores.shape == (1, 1000, *map_size)
    assert_matches_logits(scores.mean(dim=(2, 3)), classifier(image))


@pytest.mark.parametrize(
    ("classifier", "size", "error", "match"),
    [
        (nn.Conv2d(3, 8, 3), {}, TypeError, "supports torchvision VGG"),
        (nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), {"input_size": (32, 32)}, ValueError, "no nn.Flatten"),
        (nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten()), {"input_size": (32, 32)}, ValueError, "no nn.Linear after"),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.Softmax(dim=-1)),
            {"input_size": (8, 8)},
            ValueError,
            "cannot convolutionalize head layer .*Softmax",
        ),
        (lenet(), {"input_size": (32, 32), "in_channels": 1}, ValueError, "expects 256 inputs"),
        (TinyVGG(pool_size=2), {"input_size": (16, 16)}, ValueError, "not the identity"),
        (
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4), nn.ReLU()),
            {"input_size": (16, 16)},
            ValueError,
            "global average pool",
        ),
    ],
)
def test_unsupported_classifier_raises(classifier, size, error, match):
    with pytest.raises(error, match=match):
        convolutionalize(classifier, **size)

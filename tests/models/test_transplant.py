"""Transplanting an ImageNet classifier (torchvision state-dict format) into the FCNs."""

import pytest
import torch
import torchvision

from fcnseg.models import FCN32s, FCNAlexNet, transplant_alexnet, transplant_vgg16


def test_vgg16_transplant_reshapes_fc_layers_into_convolutions(tmp_path):
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    model = transplant_vgg16(FCN32s(num_classes=3).eval(), path)
    assert torch.equal(model.conv1_1.weight, vgg.features[0].weight)
    assert torch.equal(model.conv5_3.bias, vgg.features[28].bias)
    # fc6 as a 7x7 convolution over pool5 equals the Linear layer over the flattened pool5.
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pool5 = vgg.features(x)  # (1, 512, 7, 7)
        expected = vgg.classifier[0](pool5.flatten(1))
        got = model.fc6(pool5).flatten(1)
        assert torch.allclose(got, expected, atol=1e-4)
        expected7 = vgg.classifier[3](torch.relu(expected))
        got7 = model.fc7(torch.relu(got)[..., None, None]).flatten(1)
        assert torch.allclose(got7, expected7, atol=1e-4)


def test_alexnet_transplant_needs_the_torchvision_layout():
    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None).eval()
    model = transplant_alexnet(FCNAlexNet(num_classes=3, layout="torchvision").eval(), alexnet.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pool5 = alexnet.features(x)  # (1, 256, 6, 6)
        assert torch.allclose(model.fc6(pool5).flatten(1), alexnet.classifier[1](pool5.flatten(1)), atol=1e-4)
    with pytest.raises(ValueError, match="layout='torchvision'"):
        transplant_alexnet(FCNAlexNet(num_classes=3), alexnet.state_dict())


def test_wrong_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such VGG16 weights file"):
        transplant_vgg16(FCN32s(num_classes=2), tmp_path / "missing.pth")
    with pytest.raises(KeyError, match="features.0.weight"):
        transplant_vgg16(FCN32s(num_classes=2), {"conv.weight": torch.zeros(1)})

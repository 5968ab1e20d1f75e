"""FCN-GoogLeNet: any-size output, torchvision's weights through torchvision's own forward, and the alignment."""

import pytest
import torch
import torchvision
from torch import nn

from fcnseg.dense import coarse_scores
from fcnseg.models.googlenet import FCNGoogLeNet, GoogLeNetBackbone, transplant_googlenet
from fcnseg.models.layers import upsampling_layers
from fcnseg.models.registry import MODEL_SPECS, build_model
from fcnseg.stats import receptive_field_extent


@pytest.fixture(scope="module")
def model() -> FCNGoogLeNet:
    torch.manual_seed(0)
    fcn = build_model("fcn-googlenet", num_classes=3).eval()
    nn.init.normal_(fcn.score_fr.weight, std=0.1)  # score layers start at zero
    return fcn


@torch.no_grad()
def test_output_has_input_size_for_odd_sizes(model):
    for height, width in [(1, 1), (15, 15), (37, 53), (101, 67)]:
        assert model(torch.randn(1, 3, height, width)).shape == (1, 3, height, width)


@pytest.mark.parametrize("transform_input", [False, True])
@torch.no_grad()
def test_transplanted_score_map_reproduces_torchvision_logits(transform_input):
    """Independent check through torchvision's forward: with fc as the 1x1 score layer, the 7x7 score map of a
    224 image averages to torchvision's logits (its global average pool commutes with the linear fc). Ten classes,
    not 1000: a 1000-class model's 63x63 upsampling kernel alone would be 1000 x 1000 x 63 x 63 floats."""
    torch.manual_seed(1)
    classifier = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=10,
                                              transform_input=transform_input).eval()
    _randomize(classifier)
    fcn = transplant_googlenet(FCNGoogLeNet(num_classes=10), classifier.state_dict(),
                               transform_input=transform_input).eval()
    fcn.score_fr.weight.copy_(classifier.fc.weight.view(10, 1024, 1, 1))  # (out, in) -> (out, in, 1, 1)
    fcn.score_fr.bias.copy_(classifier.fc.bias)
    image = torch.randn(2, 3, 224, 224)
    scores = coarse_scores(fcn, image)
    assert scores.shape == (2, 10, 7, 7)
    logits = classifier(image)
    scale = logits.abs().max().item()
    assert logits.std().item() > 1e-3 * scale > 0
    torch.testing.assert_close(scores.mean(dim=(2, 3)), logits, rtol=1e-4, atol=1e-4 * scale)


def _randomize(net: nn.Module) -> None:
    """Weights under which the logits depend on the image (torchvision's std-0.01 init leaves mostly fc's bias) and
    non-trivial batch-norm statistics, so that a wrongly mapped layer or input convention would show."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
        nn.init.zeros_(net.fc.bias)


def test_transplant_rejects_other_state_dicts():
    state = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}
    with pytest.raises(KeyError, match="not a torchvision GoogLeNet"):
        transplant_googlenet(FCNGoogLeNet(num_classes=2), state)


def test_input_convention_travels_in_the_state_dict():
    source = FCNGoogLeNet(num_classes=2, transform_input=True)
    restored = build_model("fcn-googlenet", num_classes=2)
    assert torch.equal(restored.backbone.input_transform.shift, torch.zeros(1, 3, 1, 1))
    restored.load_state_dict(source.state_dict())
    torch.testing.assert_close(restored.backbone.input_transform.scale.flatten(), torch.tensor([0.458, 0.448, 0.45]))
    assert MODEL_SPECS["fcn-googlenet"].normalization == "imagenet" == restored.backbone.normalization


def test_builder_contract():
    assert sum(p.numel() for p in FCNGoogLeNet(num_classes=2).backbone.parameters()) > 5_000_000
    assert not hasattr(FCNGoogLeNet(num_classes=2).backbone, "aux1")  # final loss only
    with pytest.raises(ValueError, match="in_channels"):
        build_model("fcn-googlenet", num_classes=2, in_channels=1)
    assert all(layer.weight.requires_grad for layer in
               upsampling_layers(build_model("fcn-googlenet", num_classes=2, learnable_upsampling=True)))


def test_score_cells_are_centred_where_the_upsampling_puts_them(model):
    """Cell i of score_fr is centred on 32 i + 22 (cell_centres) by its measured receptive field, and an impulse at
    that cell peaks there in the output."""
    assert GoogLeNetBackbone.cell_centres[2] == 22.0
    for cell in [(6, 7), (7, 6)]:  # fields of 379 pixels, inside a 448 image
        first_row, last_row, first_col, last_col = receptive_field_extent(model, side=448, cell=cell)
        assert 0 < first_row and 0 < first_col and last_row < 447 and last_col < 447
        assert ((first_row + last_row) / 2, (first_col + last_col) / 2) == (32 * cell[0] + 22, 32 * cell[1] + 22)
    side = 192
    impulse = torch.zeros(1, 3, side // 32, side // 32)
    impulse[0, 1, 2, 3] = 1.0

    def inject(module, inputs, output):
        return impulse

    handle = model.score_fr.register_forward_hook(inject)
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, side, side))
    finally:
        handle.remove()
    peak = divmod(out[0, 1].argmax().item(), side)
    assert peak == (32 * 2 + 22, 32 * 3 + 22)

"""FCN-GoogLeNet (paper, section 4.1 and Table 1): torchvision's GoogLeNet convolutionalized, stride 32.

As the paper did: only the final loss (the two auxiliary classifiers are not built), the final average pooling
discarded, and the 1000-way classifier replaced by a 1x1 score layer ``score_fr`` over the 1024-channel
``inception5b`` features (zero-initialized), upsampled 32x by a bilinear transposed convolution. The model is a
``BackboneFCN`` (``fcnseg.models.backbone_fcn``) at output stride 32 on ``GoogLeNetBackbone``, so it shares their
alignment, any-size input (zero padding of the bottom/right to a multiple of 32) and ``fcnseg.dense`` support.

Geometry. ``conv1`` (7x7/2, pad 3) is centred; every 3x3/2 ceil-mode pool without padding maps output ``i`` to
input ``2 i + 1`` and ``maxpool4`` (2x2/2) to ``2 i + 0.5``; the inception modules are stride 1 and centred.
Composed: cell ``i`` of the stride-8/16/32 maps is centred on input pixel ``8 i + 6``, ``16 i + 14``, ``32 i + 22``
(``cell_centres``; the 32x upsampling then uses a 63-pixel kernel cropped at 9).

Input convention. ``normalization = "imagenet"`` (torchvision's mean/std). torchvision's ImageNet GoogLeNet
weights were ported from the original model, which expects ``(x - 0.5) / 0.5`` of [0, 1] RGB; torchvision feeds
them ImageNet-normalized input and converts it first (``transform_input=True``, set by its weights builder). Here
that conversion is the per-channel affine ``input_transform`` (buffers, so it travels in state
dicts and checkpoints): identity for a fresh model, torchvision's conversion after
``transplant_googlenet(..., transform_input=True)``.

torchvision's GoogLeNet is not exactly the paper's: its Inception "5x5" branches are 3x3 (a known bug kept for
weight compatibility, pytorch/vision#906) and ``maxpool4`` is 2x2/2 rather than 3x3/2, so the score cells see
379 pixels rather than the paper's figure (907, which also counts the discarded 7x7 average pool; docs/paper.md).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from fcnseg.models.backbone_fcn import BackboneFCN
from fcnseg.models.layers import ChannelAffine
from fcnseg.models.transplant import load_classifier_state_dict

# torchvision GoogLeNet's layers up to inception5b, in forward order; f8, f16, f32 are the outputs of these three.
GOOGLENET_TRUNK = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                   "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                   "inception5a", "inception5b")
FEATURE_LAYERS = ("inception3b", "inception4e", "inception5b")
# torchvision's ``transform_input``: ImageNet-normalized x -> (x * std + mean - 0.5) / 0.5, channel by channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keys of a torchvision GoogLeNet state dict that the FCN does not use: auxiliary classifiers, the 1000-way fc.
UNUSED_PREFIXES = ("aux1.", "aux2.", "fc.")


class GoogLeNetBackbone(nn.Module):
    """torchvision GoogLeNet's trunk: ``forward((N, 3, H, W)) -> (f8, f16, f32)``, as ``fcnseg.models.backbones``.

    Parameter names are torchvision's (``conv1.conv.weight``, ``inception4a.branch2.1.bn.running_var``, ...).
    """

    normalization = "imagenet"
    cell_centres = (6.0, 14.0, 22.0)
    feature_channels = (480, 832, 1024)

    def __init__(self, *, transform_input: bool = False):
        super().__init__()
        net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
        for name in GOOGLENET_TRUNK:
            self.add_module(name, getattr(net, name))
        for module in self.modules():
            # The inception pools are 3x3/1 with padding 1, where ceil mode changes nothing; turned off because
            # fcnseg.dense.rarefy refuses padded ceil-mode pools (it cannot yet dilate padded pools: docs/paper.md).
            if isinstance(module, nn.MaxPool2d) and module.stride == 1:
                module.ceil_mode = False
        self.dropout = nn.Dropout(p=0.2)  # torchvision's, before its classifier: here before score_fr
        self.input_transform = ChannelAffine(3)  # the identity unless transform_input
        set_transform_input(self, transform_input)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.input_transform(x)  # (N, 3, H, W)
        features = []
        for name in GOOGLENET_TRUNK:
            h = getattr(self, name)(h)
            if name in FEATURE_LAYERS:
                features.append(h)  # (N, 480, H/8, W/8), (N, 832, H/16, W/16), (N, 1024, H/32, W/32)
        f8, f16, f32 = features
        return f8, f16, self.dropout(f32)


@torch.no_grad()
def set_transform_input(backbone: GoogLeNetBackbone, transform_input: bool) -> None:
    """Make the input affine torchvision's ``transform_input`` conversion (``True``) or the identity."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    if transform_input:
        scale, shift = std / 0.5, (mean - 0.5) / 0.5
    else:
        scale, shift = torch.ones_like(std), torch.zeros_like(mean)
    backbone.input_transform.scale.copy_(scale)
    backbone.input_transform.shift.copy_(shift)


class FCNGoogLeNet(BackboneFCN):
    """``forward((N, 3, H, W)) -> (N, num_classes, H, W)``: ``score_fr`` on inception5b, one 32x upsampling."""

    name = "fcn-googlenet"

    def __init__(self, *, num_classes: int, learnable_upsampling: bool = False, in_channels: int = 3,
                 transform_input: bool = False):
        if in_channels != 3:
            raise ValueError(f"GoogLeNet takes 3-channel RGB input, got in_channels={in_channels}")
        super().__init__(GoogLeNetBackbone(transform_input=transform_input), num_classes=num_classes,
                         output_stride=32, learnable_upsampling=learnable_upsampling)


def transplant_googlenet(model: FCNGoogLeNet, weights, *, transform_input: bool = True) -> FCNGoogLeNet:
    """Fill ``model``'s trunk from a torchvision GoogLeNet (in place; returns it). ``score_fr`` is left as it is.

    ``weights``: a state dict, a local ``.pth`` path, or ``torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1``
    (downloads when online). Auxiliary classifiers and ``fc`` are dropped. ``transform_input`` must be what the
    weights were trained with: ``True`` for torchvision's ImageNet weights (its builder sets it), ``False`` for a
    ``googlenet(weights=None)`` trained from scratch (torchvision's default).
    """
    state = load_classifier_state_dict(weights, arch="GoogLeNet")
    trunk = {key: value for key, value in state.items() if not key.startswith(UNUSED_PREFIXES)}
    missing, unexpected = model.backbone.load_state_dict(trunk, strict=False)
    missing = [key for key in missing if not key.startswith("input_transform.")]
    if missing or unexpected:
        raise KeyError(f"not a torchvision GoogLeNet state dict: missing {missing[:3]}, unexpected {unexpected[:3]}")
    set_transform_input(model.backbone, transform_input)
    return model

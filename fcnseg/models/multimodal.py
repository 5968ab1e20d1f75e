"""Multi-modal FCN-32s for NYUDv2 (paper, section 5): early fusion of colour and depth, late fusion of
colour and HHA, as the reference's nyud-fcn32s-color-d and nyud-fcn32s-color-hha (net.py, solve.py).

The modalities come stacked in one tensor, so the models stay tensor-in, tensor-out (and exportable):

  fcn32s-nyud-rgbd    (N, 4, H, W): channels 0-2 colour (normalized as the run says; "caffe-nyud" is BGR minus
                      the NYUDv2 mean), channel 3 log-depth minus its mean (``fcnseg.data.nyud.normalize_nyud``)
  fcn32s-nyud-rgbhha  (N, 6, H, W): channels 0-2 colour as above, 3-5 HHA minus its mean, in file order

Early fusion is FCN-32s with a 4-channel first layer (the reference's ``conv1_1_bgrd``, here ``conv1_1``);
``early_fusion_from_rgb`` initializes it as the reference does: colour filters copied, the depth filter the
mean of the colour filters. Late fusion runs two VGG16 streams (``color.*`` and ``hha.*``, the reference's
``<layer>color`` and ``<layer>hha``) and fuses their ``score_fr`` as the reference's ``score_fused``
(Eltwise SUM with coefficients 0.5, 0.5) before one 32x ``upscore``.
"""

from __future__ import annotations

import torch
from torch import nn

from fcnseg.models.layers import BilinearUpsample, crop_like
from fcnseg.models.transplant import copy_shared_layers
from fcnseg.models.vgg import VGG16FCN, FCN32s

MODALITY_CHANNELS: dict[str, int] = {"color": 3, "depth": 1, "hha": 3}


def _check_in_channels(name: str, in_channels: int, expected: int) -> None:
    if in_channels != expected:
        raise ValueError(f"{name} takes {expected} stacked input channels, got in_channels={in_channels}")


class EarlyFusionFCN32s(FCN32s):
    """FCN-32s on colour + depth stacked as ``(N, 4, H, W)``: ``forward -> (N, num_classes, H, W)``."""

    name = "fcn32s-nyud-rgbd"
    modalities = ("color", "depth")
    default_in_channels = 4

    def __init__(self, *, num_classes: int = 40, learnable_upsampling: bool = False, in_channels: int = 4):
        _check_in_channels(self.name, in_channels, self.default_in_channels)
        super().__init__(num_classes=num_classes, learnable_upsampling=learnable_upsampling, in_channels=in_channels)


class LateFusionFCN32s(nn.Module):
    """Colour and HHA streams stacked as ``(N, 6, H, W)``: ``forward -> (N, num_classes, H, W)``."""

    name = "fcn32s-nyud-rgbhha"
    modalities = ("color", "hha")
    default_in_channels = 6
    output_stride = 32
    stream_weights = (0.5, 0.5)  # the reference's score_fused coefficients

    def __init__(self, *, num_classes: int = 40, learnable_upsampling: bool = False, in_channels: int = 6):
        super().__init__()
        _check_in_channels(self.name, in_channels, self.default_in_channels)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.learnable_upsampling = learnable_upsampling
        self.color = VGG16FCN(num_classes=num_classes, learnable_upsampling=learnable_upsampling)
        self.hha = VGG16FCN(num_classes=num_classes, learnable_upsampling=learnable_upsampling)
        self.upscore = BilinearUpsample(num_classes, stride=32, kernel_size=64, learnable=learnable_upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        color, hha = x[:, :3], x[:, 3:]  # (N, 3, H, W) each
        score_frcolor = self.color.coarse_scores(color)  # (N, K, h/32, w/32) on the padded image
        score_frhha = self.hha.coarse_scores(hha)
        score_fused = self.stream_weights[0] * score_frcolor + self.stream_weights[1] * score_frhha
        return crop_like(self.upscore(score_fused), 19, height, width)  # (N, K, H, W)


@torch.no_grad()
def early_fusion_from_rgb(rgb: VGG16FCN) -> EarlyFusionFCN32s:
    """The reference's surgery (nyud-fcn32s-color-d/solve.py) from a colour VGG16 FCN (e.g. ImageNet FCN-32s).

    ``conv1_1[:, :3]`` is the colour model's ``conv1_1``, ``conv1_1[:, 3]`` its mean over the colour channels,
    the bias is copied; every other layer of matching name and shape is copied.
    """
    if rgb.in_channels != 3:
        raise ValueError(f"early fusion starts from a 3-channel colour model, got in_channels={rgb.in_channels}")
    fused = EarlyFusionFCN32s(num_classes=rgb.num_classes, learnable_upsampling=rgb.learnable_upsampling)
    copy_shared_layers(fused, rgb.state_dict())
    weight = rgb.conv1_1.weight  # (64, 3, 3, 3)
    fused.conv1_1.weight[:, :3] = weight
    fused.conv1_1.weight[:, 3] = weight.mean(dim=1)
    fused.conv1_1.bias.copy_(rgb.conv1_1.bias)
    return fused.to(weight.device)


def late_fusion_from_streams(color: VGG16FCN, hha: VGG16FCN) -> LateFusionFCN32s:
    """The reference's init (nyud-fcn32s-color-hha/solve.py): each stream from a trained single-modality FCN."""
    if color.num_classes != hha.num_classes:
        raise ValueError(f"the streams score {color.num_classes} and {hha.num_classes} classes")
    fused = LateFusionFCN32s(num_classes=color.num_classes, learnable_upsampling=color.learnable_upsampling)
    copy_shared_layers(fused, color.state_dict(), prefix="color.")
    copy_shared_layers(fused, hha.state_dict(), prefix="hha.")
    return fused.to(next(color.parameters()).device)

"""FCN-AlexNet (stride 32), as the reference's voc-fcn-alexnet/net.py, in two layouts.

``layout="caffenet"`` is the reference's: CaffeNet's 96/256/384/384/256 channels, grouped conv2,
conv4 and conv5 (two groups, from the original two-GPU split) and local response normalization
after pool1 and pool2, so the reference's Caffe weights load. ``layout="torchvision"`` follows
torchvision's AlexNet (64/192/384/256/256 channels, no groups, no LRN), for users who start from
torchvision's ImageNet weights. Both pad the input by 100 and crop the 63x63 upsampled scores at
offset 18 (conv1 k=11 s=4 p=100, three 3x3/2 pools, fc6 6x6, deconv k=63 s=32; docs/alignment.md).
"""

from __future__ import annotations

import torch
from torch import nn

from fcnseg.models.layers import REFERENCE_INPUT_PAD, BilinearUpsample, crop_like, zero_init

# Per layout: output channels of conv1..conv5 and the groups of each.
ALEXNET_LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "caffenet": ((96, 256, 384, 384, 256), (1, 2, 1, 2, 2)),
    "torchvision": ((64, 192, 384, 256, 256), (1, 1, 1, 1, 1)),
}


class FCNAlexNet(nn.Module):
    """``forward((N, C, H, W)) -> (N, num_classes, H, W)``; one 32x upsampling of score_fr."""

    name = "fcn-alexnet"
    output_stride = 32
    # Receptive-field centre of score_fr cell 0 (docs/alignment.md): x maps to (x + 95) / 32 - 3.375, so cell i is
    # centred on input pixel 32 i + 13.
    score_cell_centre = 13.0

    def __init__(
        self,
        *,
        num_classes: int,
        layout: str = "caffenet",
        learnable_upsampling: bool = False,
        in_channels: int = 3,
    ):
        super().__init__()
        if layout not in ALEXNET_LAYOUTS:
            raise ValueError(f"unknown AlexNet layout {layout!r}; choose one of {sorted(ALEXNET_LAYOUTS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.layout = layout
        self.in_channels = in_channels
        self.learnable_upsampling = learnable_upsampling
        channels, groups = ALEXNET_LAYOUTS[layout]
        with_lrn = layout == "caffenet"

        self.conv1 = nn.Conv2d(in_channels, channels[0], 11, stride=4, padding=REFERENCE_INPUT_PAD)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if with_lrn else nn.Identity()
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5, padding=2, groups=groups[1])
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if with_lrn else nn.Identity()
        self.conv3 = nn.Conv2d(channels[1], channels[2], 3, padding=1, groups=groups[2])
        self.relu3 = nn.ReLU(inplace=True)
        self.conv4 = nn.Conv2d(channels[2], channels[3], 3, padding=1, groups=groups[3])
        self.relu4 = nn.ReLU(inplace=True)
        self.conv5 = nn.Conv2d(channels[3], channels[4], 3, padding=1, groups=groups[4])
        self.relu5 = nn.ReLU(inplace=True)
        self.pool5 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.fc6 = nn.Conv2d(channels[4], 4096, 6)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        zero_init(self.score_fr)
        self.upscore = BilinearUpsample(num_classes, stride=32, kernel_size=63, learnable=learnable_upsampling)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-32 fc7 features ``(N, 4096, h, w)``."""
        h = self.norm1(self.pool1(self.relu1(self.conv1(x))))
        h = self.norm2(self.pool2(self.relu2(self.conv2(h))))
        h = self.relu3(self.conv3(h))
        h = self.relu4(self.conv4(h))
        h = self.pool5(self.relu5(self.conv5(h)))
        h = self.drop6(self.relu6(self.fc6(h)))
        return self.drop7(self.relu7(self.fc7(h)))

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 pads the input itself (100 pixels): nothing to do before the trunk."""
        return x

    def coarse_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, K, h, w)``: ``score_fr`` on fc7."""
        return self.score_fr(self.features(x))

    def conv_relu_pairs(self) -> list[tuple[str, str]]:
        """``(conv, relu)`` attribute names: ``relu`` is applied to ``conv``'s output, and nothing else reads it."""
        return [(f"conv{i}", f"relu{i}") for i in range(1, 6)] + [("fc6", "relu6"), ("fc7", "relu7")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        h = self.upscore(self.coarse_scores(x))  # (N, K, 32 * (h' - 1) + 63, ...)
        return crop_like(h, 18, height, width)

"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once on VGG16, exactly as the reference (voc-fcn*s/net.py).

Layer names are the reference's, so that the state dicts converted from its Caffe models (for
example by the ``torchfcn`` port) load with ``strict=True`` and give identical outputs.

Alignment. Every layer maps a coordinate ``x`` of its input to ``a * x + b`` of its output
(Caffe's ``coord_map``): a convolution or pooling with kernel ``k``, stride ``s`` and padding ``p``
has ``a = 1/s, b = (p - (k - 1) / 2) / s``; a transposed convolution has ``a = s,
b = (k - 1) / 2 - p``. Composing them from the image to each score map gives the offsets at which
the reference crops, so that every output pixel is scored by the cell whose receptive field is
centred on it (derivation in docs/alignment.md):

    FCN-32s   upscore (k=64, s=32) of score_fr               crop 19 against the image
    FCN-16s   score_pool4 against upscore2 (k=4, s=2)         crop 5
              upscore16 (k=32, s=16)                          crop 27 against the image
    FCN-8s    score_pool4 against upscore2                    crop 5
              score_pool3 against upscore_pool4 (k=4, s=2)    crop 9
              upscore8 (k=16, s=8)                            crop 31 against the image

Layouts. ``layout="reference"`` (the default) is the above. ``layout="compact"`` drops the 100-pixel pad
(conv1_1 padding 1, fc6 padding 3: about half the FLOPs), pads the input's bottom and right to a multiple of
32 (as ``backbone_fcn.BackboneFCN``) and crops back. Every convolution then keeps its cell centres and each 2x2 pool
maps cell ``i`` to ``2 i + 1/2``, so the stride-``S`` cell ``i`` is centred on pixel ``S i + (S - 1) / 2``. The
upsampled coarse map is cropped onto the finer one (it is the larger here): upscore2 and upscore_pool4 crop 1,
upscore8 crops 4, upscore16 8, upscore 16 (derivation as in backbone_fcn.py). Same parameters, same state dict.

Interface (``fcnseg.models.interface``): ``features(x) -> (pool3, pool4, drop7)`` and each head's
``forward_head(features, height, width)``; ``coarse_scores`` (score_fr) with its ``score_cell_centre``;
``conv_relu_pairs`` for the inference rewrites.
"""

from __future__ import annotations

import torch
from torch import nn

from fcnseg.models.layers import REFERENCE_INPUT_PAD, BilinearUpsample, crop_like, pad_to_multiple, zero_init

# (block, number of 3x3 convolutions, output channels) of VGG16's five stages.
VGG16_STAGES: tuple[tuple[int, int, int], ...] = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))

LAYOUTS = ("reference", "compact")
COMPACT_SIZE_MULTIPLE = 32
# Crop of the final upsampling against the image, per layout and output stride.
FINAL_CROP: dict[str, dict[int, int]] = {"reference": {32: 19, 16: 27, 8: 31}, "compact": {32: 16, 16: 8, 8: 4}}
COMPACT_SKIP_CROP = 1  # upscore2 onto score_pool4, upscore_pool4 onto score_pool3
# Receptive-field centre of score_fr cell 0 on the image (docs/alignment.md): the reference maps x to
# (x + 99) / 32 - 3.484375, so cell i is centred on 32 i + 12.5; the compact layout's cell i on 32 i + 15.5.
SCORE_CELL_CENTRE: dict[str, float] = {"reference": 12.5, "compact": 15.5}


def vgg16_conv_names() -> list[str]:
    """``['conv1_1', 'conv1_2', 'conv2_1', ..., 'conv5_3']`` in order."""
    return [f"conv{block}_{i}" for block, count, _ in VGG16_STAGES for i in range(1, count + 1)]


class VGG16FCN(nn.Module):
    """The VGG16 trunk convolutionalized (fc6 7x7, fc7 1x1) plus ``score_fr``; heads live in subclasses.

    Subclasses implement ``forward_head(features, height, width) -> (N, num_classes, H, W)``, the scores from
    ``features``; ``forward((N, C, H, W))`` is ``forward_head(features(x), H, W)``.
    """

    name = "vgg16-fcn"
    output_stride = 32

    def __init__(self, *, num_classes: int, learnable_upsampling: bool = False, in_channels: int = 3,
                 layout: str = "reference"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.learnable_upsampling = learnable_upsampling
        channels = in_channels
        for block, count, out_channels in VGG16_STAGES:
            for i in range(1, count + 1):
                padding = REFERENCE_INPUT_PAD if (block, i) == (1, 1) and layout == "reference" else 1
                setattr(self, f"conv{block}_{i}", nn.Conv2d(channels, out_channels, 3, padding=padding))
                setattr(self, f"relu{block}_{i}", nn.ReLU(inplace=True))
                channels = out_channels
            # Caffe pools round up ("ceil"), so odd sizes keep their last row and column.
            setattr(self, f"pool{block}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        self.fc6 = nn.Conv2d(512, 4096, 7, padding=0 if layout == "reference" else 3)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        zero_init(self.score_fr)

    def forward(self, x: torch.Tensor):
        height, width = x.shape[-2:]
        return self.forward_head(self.features(x), height, width)

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor], height: int, width: int):
        """The scores ``(N, K, height, width)`` from ``features(x)``; the heads (subclasses) define it."""
        raise NotImplementedError(f"{type(self).__name__} is a trunk without a head")

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(pool3, pool4, drop7)``: the stride-8, stride-16 and stride-32 features."""
        h = x
        if self.layout == "compact":  # (N, C, 32 * ceil(H / 32), 32 * ceil(W / 32))
            h = pad_to_multiple(x, COMPACT_SIZE_MULTIPLE)
        pools = self.stages(h)
        return pools[3], pools[4], self.fully_connected(pools[5])

    def stages(self, h: torch.Tensor, *, first: int = 1, last: int = 5) -> dict[int, torch.Tensor]:
        """Run VGG stages ``first..last`` (convolutions, ReLUs, pool) from stage ``first``'s input;
        ``{block: its pool's output}``."""
        pools = {}
        for block, count, _ in VGG16_STAGES[first - 1 : last]:
            for i in range(1, count + 1):
                h = getattr(self, f"relu{block}_{i}")(getattr(self, f"conv{block}_{i}")(h))
            h = getattr(self, f"pool{block}")(h)
            pools[block] = h
        return pools

    def fully_connected(self, pool5: torch.Tensor) -> torch.Tensor:
        """pool5 -> drop7: the convolutionalized fc6 and fc7."""
        h = self.drop6(self.relu6(self.fc6(pool5)))  # (N, 4096, h/32 - 6, w/32 - 6) on the padded image
        return self.drop7(self.relu7(self.fc7(h)))

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk pads its input itself (100 pixels, or up to a multiple of 32): nothing to do before it."""
        return x

    def coarse_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, K, h, w)``: ``score_fr`` on the stride-32 features."""
        return self.score_fr(self.features(x)[2])  # (N, K, ~(H + 198) / 32 - 6, ...) in the reference layout

    @property
    def score_cell_centre(self) -> float:
        return SCORE_CELL_CENTRE[self.layout]

    def conv_relu_pairs(self) -> list[tuple[str, str]]:
        """``(conv, relu)`` attribute names: ``relu`` is applied to ``conv``'s output, and nothing else reads it."""
        return [(name, name.replace("conv", "relu")) for name in vgg16_conv_names()] + [("fc6", "relu6"),
                                                                                        ("fc7", "relu7")]

    def fuse(self, upscored: torch.Tensor, score_pool: torch.Tensor, reference_crop: int) -> torch.Tensor:
        """Sum of a 2x-upsampled score map and a skip's scores, cropped onto the smaller of the two."""
        if self.layout == "reference":  # score_pool is the larger: crop it (score_pool4c, score_pool3c)
            return upscored + crop_like(score_pool, reference_crop, upscored.shape[-2], upscored.shape[-1])
        return score_pool + crop_like(upscored, COMPACT_SKIP_CROP, score_pool.shape[-2], score_pool.shape[-1])

    def crop_output(self, upscored: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return crop_like(upscored, FINAL_CROP[self.layout][self.output_stride], height, width)  # (N, K, H, W)


class FCN32s(VGG16FCN):
    """Single-stream FCN: score_fr upsampled 32x in one step."""

    name = "fcn32s"
    output_stride = 32

    def __init__(self, *, num_classes: int, learnable_upsampling: bool = False, in_channels: int = 3,
                 layout: str = "reference"):
        super().__init__(num_classes=num_classes, learnable_upsampling=learnable_upsampling, in_channels=in_channels,
                         layout=layout)
        self.upscore = BilinearUpsample(num_classes, stride=32, kernel_size=64, learnable=learnable_upsampling)

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor], height: int,
                     width: int) -> torch.Tensor:
        _, _, h = features
        h = self.upscore(self.score_fr(h))  # (N, K, 32 * (h' - 1) + 64, ...)
        return self.crop_output(h, height, width)


class FCN16s(VGG16FCN):
    """Two-stream FCN: score_fr upsampled 2x, fused with score_pool4, upsampled 16x."""

    name = "fcn16s"
    output_stride = 16

    def __init__(self, *, num_classes: int, learnable_upsampling: bool = False, in_channels: int = 3,
                 layout: str = "reference"):
        super().__init__(num_classes=num_classes, learnable_upsampling=learnable_upsampling, in_channels=in_channels,
                         layout=layout)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        zero_init(self.score_pool4)
        self.upscore2 = BilinearUpsample(num_classes, stride=2, kernel_size=4, learnable=learnable_upsampling)
        self.upscore16 = BilinearUpsample(num_classes, stride=16, kernel_size=32, learnable=learnable_upsampling)

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor], height: int,
                     width: int) -> torch.Tensor:
        _, pool4, h = features
        upscore2 = self.upscore2(self.score_fr(h))  # (N, K, 1/16)
        h = self.upscore16(self.fuse(upscore2, self.score_pool4(pool4), 5))
        return self.crop_output(h, height, width)

    @classmethod
    def from_fcn32s(cls, fcn32s: FCN32s) -> FCN16s:
        """Staged training: copy the trunk and score_fr of a trained FCN-32s; new score layers start at zero."""
        from fcnseg.models.transplant import staged_from

        return staged_from(cls, fcn32s)


class FCN8s(VGG16FCN):
    """Three-stream FCN: adds score_pool3 at stride 8, then upsamples 8x."""

    name = "fcn8s"
    output_stride = 8
    # The at-once variant scales the pool features so that the skips start small (paper, section 4.2).
    scale_pool4 = 1.0
    scale_pool3 = 1.0

    def __init__(self, *, num_classes: int, learnable_upsampling: bool = False, in_channels: int = 3,
                 layout: str = "reference"):
        super().__init__(num_classes=num_classes, learnable_upsampling=learnable_upsampling, in_channels=in_channels,
                         layout=layout)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        zero_init(self.score_pool3)
        zero_init(self.score_pool4)
        self.upscore2 = BilinearUpsample(num_classes, stride=2, kernel_size=4, learnable=learnable_upsampling)
        self.upscore_pool4 = BilinearUpsample(num_classes, stride=2, kernel_size=4, learnable=learnable_upsampling)
        self.upscore8 = BilinearUpsample(num_classes, stride=8, kernel_size=16, learnable=learnable_upsampling)

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor], height: int,
                     width: int) -> torch.Tensor:
        pool3, pool4, h = features
        if self.scale_pool4 != 1.0:
            pool4 = pool4 * self.scale_pool4
        if self.scale_pool3 != 1.0:
            pool3 = pool3 * self.scale_pool3
        upscore2 = self.upscore2(self.score_fr(h))  # (N, K, 1/16)
        upscore_pool4 = self.upscore_pool4(self.fuse(upscore2, self.score_pool4(pool4), 5))  # (N, K, 1/8)
        h = self.upscore8(self.fuse(upscore_pool4, self.score_pool3(pool3), 9))
        return self.crop_output(h, height, width)

    @classmethod
    def from_fcn16s(cls, fcn16s: FCN16s) -> FCN8s:
        """Staged training: copy the trunk, score_fr and score_pool4 of a trained FCN-16s."""
        from fcnseg.models.transplant import staged_from

        return staged_from(cls, fcn16s)


class FCN8sAtOnce(FCN8s):
    """FCN-8s trained in one stage: pool4 scaled by 0.01 and pool3 by 0.0001 before scoring (voc-fcn8s-atonce)."""

    name = "fcn8s-atonce"
    scale_pool4 = 0.01
    scale_pool3 = 0.0001

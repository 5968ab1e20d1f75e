"""FCN-32s/16s/8s heads on any backbone of ``fcnseg.models.backbones`` (paper, section 4.2), one code path.

``score_fr`` scores the stride-32 features; ``score_pool4`` and ``score_pool3`` (zero-initialized, as the
paper) score the stride-16 and stride-8 features; fixed (or learnable) bilinear transposed convolutions
upsample and fuse them, and the last one returns to the input's resolution.

FCN-4s goes one skip further, as the paper tried with pool2 ("diminishing returns" on PASCAL VOC, section 4.2):
``score_pool2`` scores the stride-4 features of a backbone that has them (``forward_stride4``,
``stride4_channels``, ``stride4_centre``: EfficientNet-Lite), for thin objects (CamVid's poles are 3-8 pixels
wide at 360x480, under one stride-8 cell).

Alignment. The backbones have no 100-pixel input pad, so the crops come from their geometry: cell ``i`` of
the stride-``S`` map is centred on input pixel ``S * i + O`` (the backbone's ``cell_centres``). A transposed
convolution with factor ``f`` and kernel ``k`` puts coarse cell ``i`` at output ``f * i + (k - 1) / 2``, so the
fine cell ``j`` (stride ``S / f``, centre ``o``) sits at output ``j + (k - 1) / 2 + f * (o - O) / S``: that is
the crop offset. The kernel is the paper's ``2 f`` when this is an integer (VGG's half-cell centres) and
``2 f - 1`` otherwise (cell centres on the grid: ResNet, EfficientNet-Lite); the bilinear kernel then
interpolates exactly between neighbouring cells. The geometry holds for sides that are multiples of 32, so
``forward`` zero-pads the input's bottom and right up to that (the padded pixels read as the mean colour)
and crops the scores back to the input's size.
"""

from __future__ import annotations

import torch
from torch import nn

from fcnseg.models.layers import BilinearUpsample, crop_like, pad_to_multiple, zero_init

SIZE_MULTIPLE = 32
# Name of the last upsampling layer per output stride, as the reference names them.
FINAL_UPSCORE: dict[int, str] = {32: "upscore", 16: "upscore16", 8: "upscore8", 4: "upscore4"}


def upsampling_geometry(
    *, factor: int, coarse_stride: int, coarse_centre: float, fine_stride: int, fine_centre: float
) -> tuple[int, int]:
    """``(kernel_size, crop_offset)`` that upsample a coarse map onto a fine one, cell centre on cell centre."""
    if coarse_stride != factor * fine_stride:
        raise ValueError(f"stride {coarse_stride} upsampled {factor}x is not stride {fine_stride}")
    shift = factor * (fine_centre - coarse_centre) / coarse_stride  # in fine cells
    for kernel_size in (2 * factor, 2 * factor - 1):
        crop = (kernel_size - 1) / 2 + shift
        if crop == int(crop) and 0 <= crop <= kernel_size - factor:
            return kernel_size, int(crop)
    raise ValueError(f"no bilinear upsampling aligns centres {coarse_centre} (stride {coarse_stride}) "
                     f"and {fine_centre} (stride {fine_stride})")


class BackboneFCN(nn.Module):
    """``forward((N, 3, H, W)) -> (N, num_classes, H, W)`` for any H, W; ``output_stride`` 32, 16, 8, or 4 on a
    backbone with stride-4 features.

    ``backbone``: a module following ``fcnseg.models.backbones`` (``feature_channels``, ``cell_centres``,
    ``forward -> (f8, f16, f32)``).
    """

    def __init__(self, backbone: nn.Module, *, num_classes: int, output_stride: int,
                 learnable_upsampling: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if output_stride not in FINAL_UPSCORE:
            raise ValueError(f"output_stride must be one of {sorted(FINAL_UPSCORE)}, got {output_stride}")
        if output_stride == 4 and not hasattr(backbone, "forward_stride4"):
            raise ValueError(f"output_stride 4 needs a backbone with stride-4 features (EfficientNet-Lite), "
                             f"not {type(backbone).__name__}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.learnable_upsampling = learnable_upsampling
        self.in_channels = 3
        channels8, channels16, channels32 = backbone.feature_channels
        centre8, centre16, centre32 = backbone.cell_centres

        self.score_fr = nn.Conv2d(channels32, num_classes, 1)
        zero_init(self.score_fr)
        stride, centre = 32, centre32  # of the scores fused so far
        self.crops: dict[str, int] = {}
        if output_stride <= 16:
            self.score_pool4 = nn.Conv2d(channels16, num_classes, 1)
            zero_init(self.score_pool4)
            self._add_upsampling("upscore2", factor=2, coarse=(stride, centre), fine=(16, centre16))
            stride, centre = 16, centre16
        if output_stride <= 8:
            self.score_pool3 = nn.Conv2d(channels8, num_classes, 1)
            zero_init(self.score_pool3)
            self._add_upsampling("upscore_pool4", factor=2, coarse=(stride, centre), fine=(8, centre8))
            stride, centre = 8, centre8
        if output_stride == 4:
            self.score_pool2 = nn.Conv2d(backbone.stride4_channels, num_classes, 1)
            zero_init(self.score_pool2)
            self._add_upsampling("upscore_pool3", factor=2, coarse=(stride, centre), fine=(4, backbone.stride4_centre))
            stride, centre = 4, backbone.stride4_centre
        self._add_upsampling(FINAL_UPSCORE[output_stride], factor=stride, coarse=(stride, centre), fine=(1, 0.0))

    def _add_upsampling(self, name: str, *, factor: int, coarse: tuple[int, float], fine: tuple[int, float]) -> None:
        kernel_size, crop = upsampling_geometry(
            factor=factor, coarse_stride=coarse[0], coarse_centre=coarse[1], fine_stride=fine[0], fine_centre=fine[1]
        )
        upsample = BilinearUpsample(
            self.num_classes, stride=factor, kernel_size=kernel_size, learnable=self.learnable_upsampling
        )
        self.add_module(name, upsample)
        self.crops[name] = crop

    def _upsample_onto(self, name: str, score: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        upscored = getattr(self, name)(score)  # (N, K, f * (h - 1) + k, f * (w - 1) + k)
        return crop_like(upscored, self.crops[name], like.shape[-2], like.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = self.prepare_input(x)  # (N, 3, 32 * ceil(H / 32), 32 * ceil(W / 32))
        if self.output_stride == 4:
            f4, f8, f16, f32 = self.backbone.forward_stride4(padded)
        else:
            f8, f16, f32 = self.backbone(padded)
        score = self.score_fr(f32)  # (N, K, H/32, W/32)
        if self.output_stride <= 16:
            score_pool4 = self.score_pool4(f16)  # (N, K, H/16, W/16)
            score = score_pool4 + self._upsample_onto("upscore2", score, score_pool4)
        if self.output_stride <= 8:
            score_pool3 = self.score_pool3(f8)  # (N, K, H/8, W/8)
            score = score_pool3 + self._upsample_onto("upscore_pool4", score, score_pool3)
        if self.output_stride == 4:
            score_pool2 = self.score_pool2(f4)  # (N, K, H/4, W/4)
            score = score_pool2 + self._upsample_onto("upscore_pool3", score, score_pool2)
        final = FINAL_UPSCORE[self.output_stride]
        upscored = getattr(self, final)(score)  # (N, K, >= padded size)
        return crop_like(upscored, self.crops[final], height, width)  # (N, K, H, W)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the bottom and right up to multiples of 32, where the backbone's geometry holds."""
        return pad_to_multiple(x, SIZE_MULTIPLE)

    def coarse_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, K, ceil(H / 32), ceil(W / 32))``: ``score_fr`` on the stride-32 features."""
        return self.score_fr(self.backbone(self.prepare_input(x))[2])

    def backbone_layers_to_stride(self, stride: int) -> list[nn.Module]:
        """The backbone's layers that compute its stride-``stride`` features (``layers_to_stride``), in order."""
        return self.backbone.layers_to_stride(stride)

    @property
    def score_cell_centre(self) -> float:
        return float(self.backbone.cell_centres[2])

"""Turn an image classifier into a fully convolutional net that emits a map of class scores (paper, section 3.1).

A fully connected layer looks at its whole input at once, so it is a convolution whose kernel covers
its entire input region: the first ``nn.Linear`` after the flatten, with weight ``(out, C * H * W)``,
is exactly ``nn.Conv2d(C, out, (H, W))`` with that weight reshaped to ``(out, C, H, W)`` (flatten is
row-major over ``(C, H, W)``, the same order as a conv kernel), and every later ``nn.Linear`` is a
1x1 convolution. On the classifier's native input size the resulting net emits a 1x1 map equal to
the logits. On a larger input it emits a ``(N, num_classes, h, w)`` map in one pass whose cells are
the classifier applied to windows of the image ``stride`` pixels apart (``stride`` being the product
of the trunk's strides, 32 for VGG16 and AlexNet), sharing the trunk's computation between
overlapping windows. The equivalence with cropping is exact when the trunk has no padding; with
padding (VGG) a crop sees zeros at its border where the big image has real pixels.

Supported classifiers, whose layers are copied (the original is left untouched and shares no
parameters with the result):

* torchvision VGG (any depth, with or without batch norm), AlexNet and other models laid out as
  ``features -> avgpool (nn.AdaptiveAvgPool2d) -> flatten -> classifier``;
* torchvision ResNets (``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``);
* an ``nn.Sequential`` of ``[conv/pool/... layers], nn.Flatten(), nn.Linear, [ReLU/Dropout/Linear ...]``.

The adaptive average pooling before the flatten is dropped. That is exact when it is the identity at
the native input size (VGG: 7x7 features pooled to 7x7). A global pool (``output_size=1``) followed by
an affine head (Linear/Dropout only, e.g. ResNet's ``fc``) is dropped too and the head becomes 1x1
convolutions: the net then scores every cell of the last feature map, and by linearity the spatial
mean of the score map equals the classifier's logits (the map is not 1x1 at the native size).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

RESNET_TRUNK_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

# Layers that treat every feature alike, so they act the same on a flat vector and on a score map.
ELEMENTWISE_LAYERS = (nn.Dropout, nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh)
# Layers a global average pool commutes with (in eval mode): the mean of their map is their output on the mean.
AFFINE_LAYERS = (nn.Linear, nn.Dropout, nn.Identity)

SUPPORTED = (
    "convolutionalize supports torchvision VGG/AlexNet-style classifiers (features, avgpool, classifier), "
    "torchvision ResNets (conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc), and nn.Sequential("
    "[conv/pool/... layers], nn.Flatten(), nn.Linear, [ReLU/Dropout/Linear ...])"
)

NamedLayers = list[tuple[str, nn.Module]]


def convolutionalize(
    classifier: nn.Module, *, input_size: tuple[int, int] = (224, 224), in_channels: int = 3
) -> nn.Sequential:
    """``nn.Sequential(features, classifier)`` mapping ``(N, in_channels, H, W)`` to ``(N, num_classes, h, w)``.

    ``input_size`` is the classifier's native ``(height, width)``: there the map is 1x1 and equals the
    logits (for a global-pool head, its spatial mean does). Raises ``TypeError`` for an unsupported
    module and ``ValueError`` for an unsupported layer sequence or a wrong ``input_size``.
    """
    layers = _named_layers(copy.deepcopy(classifier))
    trunk_layers, head_layers = _split_at_flatten(layers)
    pool = None
    if trunk_layers and isinstance(trunk_layers[-1][1], nn.AdaptiveAvgPool2d):
        pool = trunk_layers.pop()[1]  # dropped: pooling a bigger map would merge the windows' scores
    features = nn.Sequential(OrderedDict(trunk_layers))
    channels, height, width = _output_shape(features, input_size=input_size, in_channels=in_channels)
    kernel_size = (height, width)
    if pool is not None and _pooled_size(pool, (height, width)) != (height, width):
        if _pooled_size(pool, (height, width)) != (1, 1):
            raise ValueError(
                f"{pool} is not the identity on the {height}x{width} features of a {input_size} input, nor a "
                "global pool; pass the classifier's native input_size"
            )
        _check_affine(head_layers)
        kernel_size = (1, 1)  # score every cell; the map's mean is the global-pool logits
    head = _convolutionalize_head(head_layers, in_channels=channels, kernel_size=kernel_size)
    return nn.Sequential(OrderedDict(features=features, classifier=head))


def linear_to_conv(linear: nn.Linear, *, in_channels: int, kernel_size: tuple[int, int]) -> nn.Conv2d:
    """The ``nn.Conv2d(in_channels, out, kernel_size)`` computing ``linear`` on each window (copied weights)."""
    kernel_height, kernel_width = kernel_size
    if linear.in_features != in_channels * kernel_height * kernel_width:
        raise ValueError(
            f"{linear} expects {linear.in_features} inputs but gets {in_channels}x{kernel_height}x{kernel_width} "
            f"= {in_channels * kernel_height * kernel_width}; is input_size the classifier's native size?"
        )
    weight = linear.weight
    # skip_init: no random initialization of a (4096, 512, 7, 7) kernel about to be overwritten.
    conv = nn.utils.skip_init(
        nn.Conv2d, in_channels, linear.out_features, kernel_size, bias=linear.bias is not None,
        device=weight.device, dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.weight.shape))  # (out, C * kh * kw) -> (out, C, kh, kw)
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    conv.weight.requires_grad_(weight.requires_grad)
    if linear.bias is not None:
        conv.bias.requires_grad_(linear.bias.requires_grad)
    return conv


def _named_layers(classifier: nn.Module) -> NamedLayers:
    """The classifier's layers in forward order, with its implied flatten made an explicit ``nn.Flatten``."""
    if all(hasattr(classifier, name) for name in (*RESNET_TRUNK_NAMES, "avgpool", "fc")):
        trunk = [(name, getattr(classifier, name)) for name in (*RESNET_TRUNK_NAMES, "avgpool")]
        return [*trunk, ("flatten", nn.Flatten()), ("fc", classifier.fc)]
    features, avgpool, head = (getattr(classifier, name, None) for name in ("features", "avgpool", "classifier"))
    if isinstance(avgpool, nn.AdaptiveAvgPool2d) and isinstance(features, nn.Module):
        trunk = list(features.named_children()) if isinstance(features, nn.Sequential) else [("features", features)]
        if isinstance(head, nn.Sequential):
            return [*trunk, ("avgpool", avgpool), ("flatten", nn.Flatten()), *head.named_children()]
        if isinstance(head, nn.Linear):
            return [*trunk, ("avgpool", avgpool), ("flatten", nn.Flatten()), ("0", head)]
    if isinstance(classifier, nn.Sequential):
        return list(classifier.named_children())
    raise TypeError(f"{SUPPORTED}; got {type(classifier).__name__}")


def _split_at_flatten(layers: NamedLayers) -> tuple[NamedLayers, NamedLayers]:
    """``(trunk, head)``: the layers before and after the one ``nn.Flatten``."""
    flatten_at = [i for i, (_, layer) in enumerate(layers) if isinstance(layer, nn.Flatten)]
    if not flatten_at:
        raise ValueError(f"no nn.Flatten between the convolutional trunk and the Linear head; {SUPPORTED}")
    flatten = layers[flatten_at[0]][1]
    if flatten.start_dim != 1 or flatten.end_dim != -1:
        raise ValueError(f"{flatten} must flatten (N, C, H, W) to (N, C * H * W); {SUPPORTED}")
    trunk, head = layers[: flatten_at[0]], layers[flatten_at[0] + 1 :]
    if any(isinstance(layer, nn.Linear) for _, layer in trunk):
        raise ValueError(f"nn.Linear before the nn.Flatten is not translation invariant; {SUPPORTED}")
    if not any(isinstance(layer, nn.Linear) for _, layer in head):
        raise ValueError(f"no nn.Linear after the nn.Flatten; {SUPPORTED}")
    return trunk, head


def _output_shape(features: nn.Module, *, input_size: tuple[int, int], in_channels: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of ``features`` on a zero image of ``input_size``, run in eval mode (no stats updated)."""
    modes = {module: module.training for module in features.modules()}
    parameter = next(features.parameters(), None)
    device, dtype = (parameter.device, parameter.dtype) if parameter is not None else (None, torch.float32)
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, in_channels, *input_size, device=device, dtype=dtype))
    finally:
        for module, training in modes.items():
            module.training = training
    if out.dim() != 4:
        raise ValueError(f"the layers before nn.Flatten give shape {tuple(out.shape)}, not (N, C, H, W)")
    return out.shape[1], out.shape[2], out.shape[3]


def _pooled_size(pool: nn.AdaptiveAvgPool2d, size: tuple[int, int]) -> tuple[int, int]:
    """The ``(height, width)`` that ``pool`` gives for a ``size`` input (``None`` keeps that side)."""
    output_size = pool.output_size
    pair = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    return tuple(side if out is None else out for out, side in zip(pair, size))


def _check_affine(head_layers: NamedLayers) -> None:
    for name, layer in head_layers:
        if not isinstance(layer, AFFINE_LAYERS):
            raise ValueError(
                f"a global average pool followed by {name}: {layer} cannot be dropped (the map's mean would not "
                "equal the logits); only Linear/Dropout heads are supported after a global pool"
            )


def _convolutionalize_head(
    head_layers: NamedLayers, *, in_channels: int, kernel_size: tuple[int, int]
) -> nn.Sequential:
    """The layers after the flatten with the first Linear a ``kernel_size`` conv and later ones 1x1 convs."""
    converted: NamedLayers = []
    channels = in_channels
    for name, layer in head_layers:
        if isinstance(layer, nn.Linear):
            converted.append((name, linear_to_conv(layer, in_channels=channels, kernel_size=kernel_size)))
            channels, kernel_size = layer.out_features, (1, 1)
        elif isinstance(layer, ELEMENTWISE_LAYERS):
            converted.append((name, layer))
        else:
            raise ValueError(f"cannot convolutionalize head layer {name}: {layer}; {SUPPORTED}")
    return nn.Sequential(OrderedDict(converted))


"""Brute-force check of the reference crop offsets: every output pixel is scored by the cell
whose receptive field is centred on it.

The receptive-field centre of each score cell is measured, not derived: a one-channel copy of the
net's geometry (same kernels, strides, paddings; ones for weights, average for max pooling, no
ReLU) is linear with positive weights, so the gradient of a cell with respect to the input is
non-zero exactly on its receptive field. Independently, the real model is run with an impulse
injected at that cell of a score map (a forward hook), and the peak of what reaches the output
shows where the model's upsampling and crops put that cell. The two must coincide.
"""

import pytest
import torch
from torch import nn

from fcnseg.models import FCN8s, FCN16s, FCN32s, FCNAlexNet

PAD = 100  # the reference's input padding, made explicit in the one-channel copy


def geometry_copy(model: nn.Module, last: str) -> nn.Sequential:
    """One-channel linear copy of the model's convolutions and pools, in order, up to layer ``last``."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            conv = nn.Conv2d(1, 1, module.kernel_size, stride=module.stride, padding=0 if not layers else module.padding,
                             dilation=module.dilation, bias=False)
            nn.init.ones_(conv.weight)
            layers.append(conv)
        elif isinstance(module, nn.MaxPool2d):
            layers.append(nn.AvgPool2d(module.kernel_size, module.stride, ceil_mode=module.ceil_mode))
        if name == last:
            return nn.Sequential(*layers)
    raise AssertionError(f"no layer {last}")


def receptive_field_centres(model: nn.Module, last: str, height: int, width: int) -> dict:
    """{(i, j): (row centre, col centre)} in input coordinates, for every cell of layer ``last``."""
    net = geometry_copy(model, last).double()
    x = torch.zeros(1, 1, height + 2 * PAD, width + 2 * PAD, dtype=torch.float64, requires_grad=True)
    out = net(x)
    extents = {}
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            (grad,) = torch.autograd.grad(out[0, 0, i, j], x, retain_graph=True)
            rows = grad[0, 0].abs().sum(1).nonzero()
            cols = grad[0, 0].abs().sum(0).nonzero()
            extents[i, j] = (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item())
    # A field that runs off the padded input is clipped, hence narrower than the widest: skip those.
    full_height = max(r1 - r0 for r0, r1, _, _ in extents.values())
    full_width = max(c1 - c0 for _, _, c0, c1 in extents.values())
    return {
        cell: ((r0 + r1) / 2 - PAD, (c0 + c1) / 2 - PAD)
        for cell, (r0, r1, c0, c1) in extents.items()
        if r1 - r0 == full_height and c1 - c0 == full_width
    }


def impulse_peaks(model: nn.Module, score_layer: str, height: int, width: int) -> dict:
    """{(i, j): (row, col)} output position of the peak when the score map is an impulse at cell (i, j)."""
    score_layers = [n for n in ("score_fr", "score_pool4", "score_pool3") if hasattr(model, n)]
    shape = {}

    def record(name):
        def hook(module, inputs, output):
            shape[name] = output.shape
            return torch.zeros_like(output)
        return hook

    handles = [getattr(model, n).register_forward_hook(record(n)) for n in score_layers]
    with torch.no_grad():
        model(torch.zeros(1, 3, height, width))
    for h in handles:
        h.remove()
    peaks = {}
    _, _, rows, cols = shape[score_layer]
    # Cells near the middle land well inside the output; one forward each keeps the test fast.
    for i in range(rows // 2 - 1, rows // 2 + 1):
        for j in range(cols // 2 - 1, cols // 2 + 2):
            def inject(module, inputs, output, i=i, j=j, name=None):
                out = torch.zeros_like(output)
                out[:, 0, i, j] = 1.0
                return out

            handles = [getattr(model, n).register_forward_hook(record(n)) for n in score_layers if n != score_layer]
            handles.append(getattr(model, score_layer).register_forward_hook(inject))
            with torch.no_grad():
                response = model(torch.zeros(1, 3, height, width))[0, 0].double()
            for h in handles:
                h.remove()
            top = response.max()
            if top <= 0:
                continue
            at_top = (response >= top - 1e-6).nonzero().double()
            row, col = at_top[:, 0].mean().item(), at_top[:, 1].mean().item()
            # Keep cells whose whole peak lies inside the output, away from the crop's edge.
            if 2 <= row <= height - 3 and 2 <= col <= width - 3:
                peaks[i, j] = (row, col)
    return peaks


# fc6's receptive field is 404 pixels wide in VGG16 (355 in AlexNet): measuring it needs a larger input.
CASES = [
    (FCN32s, "score_fr", "fc6", (231, 250)),
    (FCN16s, "score_fr", "fc6", (231, 250)),
    (FCN16s, "score_pool4", "pool4", (75, 90)),
    (FCN8s, "score_fr", "fc6", (231, 250)),
    (FCN8s, "score_pool4", "pool4", (75, 90)),
    (FCN8s, "score_pool3", "pool3", (75, 90)),
    (FCNAlexNet, "score_fr", "fc6", (201, 230)),
]


@pytest.mark.parametrize("model_class, score_layer, feature_layer, size", CASES)
def test_each_cell_lands_on_its_receptive_field_centre(model_class, score_layer, feature_layer, size):
    torch.manual_seed(0)
    model = model_class(num_classes=2).eval()
    height, width = size
    peaks = impulse_peaks(model, score_layer, height, width)
    centres = receptive_field_centres(model, feature_layer, height, width)
    checked = [cell for cell in peaks if cell in centres]
    assert len(checked) >= 2
    for cell in checked:
        assert peaks[cell] == pytest.approx(centres[cell]), (cell, peaks[cell], centres[cell])

"""Shift-and-stitch against filter rarefaction (fcnseg.dense), cell by cell, on small nets and the real models.

Where the two must agree (docs/dense.md): everywhere when no layer before the last rarefied stride pads; at every
cell whose receptive field lies inside its shifted input; and everywhere when zero padding is transparent (zero
biases, a zero margin wider than the receptive fields). Phase (0, 0) of the dense map is always the coarse map.
"""

import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg.checkpoint import ModelMeta
from fcnseg.cli import build_parser
from fcnseg.dense import RarefiedFCN, coarse_scores, dense_logits, interlace, rarefy, score_centre, shift_and_stitch
from fcnseg.models.registry import build_model
from fcnseg.predict import predict_paths

NUM_CLASSES = 5


def tiny_fcn(*, pads: tuple[int, ...] = (0, 0, 0, 0), ceil_mode: bool = False, bias: bool = True) -> nn.Sequential:
    """Stride 8: three (3x3 conv, ReLU, 2x2 max pool) stages and a 3x3 score conv; ``pads`` of the four convs."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    channels = 3
    for pad in pads[:3]:
        layers += [nn.Conv2d(channels, 6, 3, padding=pad, bias=bias), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=ceil_mode)]
        channels = 6
    layers.append(nn.Conv2d(6, 4, 3, padding=pads[3], bias=bias))
    return nn.Sequential(*layers).eval()


def strided_fcn() -> nn.Sequential:
    """Stride 8 with a stride-2 convolution, a 3x3/2 ceil-mode pool (AlexNet's) and a padded last layer."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(6, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, 4, 5, padding=2),
    ).eval()


def ones_fcn() -> nn.Sequential:
    """Linear, all-ones, stride 4: the gradient of a cell is non-zero exactly on its receptive field."""
    layers = [nn.Conv2d(1, 1, 3, bias=False), nn.Conv2d(1, 1, 2, stride=2, bias=False),
              nn.Conv2d(1, 1, 3, bias=False), nn.Conv2d(1, 1, 2, stride=2, bias=False), nn.Conv2d(1, 1, 3, bias=False)]
    for layer in layers:
        nn.init.ones_(layer.weight)
    return nn.Sequential(*layers)


def random_fcn(name: str, *, zero_bias: bool) -> nn.Module:
    """A zoo model with random score layers and batch-norm statistics (biases and shifts zero if ``zero_bias``)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                if module.out_channels == NUM_CLASSES:  # score layers start at zero
                    nn.init.normal_(module.weight, std=0.1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias) if zero_bias else nn.init.normal_(module.bias, std=0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
                module.running_var.uniform_(0.5, 1.5)
                if not zero_bias:
                    nn.init.normal_(module.bias, std=0.1)
                    module.running_mean.normal_(std=0.1)
    return model.eval()


def chain_geometry(model: nn.Module) -> tuple[int, float]:
    """``(receptive field size, centre of cell 0)`` of a chain of convs and pools, from their kernels and paddings."""
    size, centre, jump = 1, 0.0, 1
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            kernel, stride, padding = (v if isinstance(v, int) else v[0]
                                       for v in (module.kernel_size, module.stride, module.padding))
            size += (kernel - 1) * jump
            centre += ((kernel - 1) / 2 - padding) * jump
            jump *= stride
    return size, centre


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def image(height: int, width: int, *, channels: int = 3, margin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Random ``(1, C, H, W)``, inside a zero margin of ``margin[0]`` at the top/left and ``margin[1]`` after."""
    torch.manual_seed(2)
    before, after = margin
    x = torch.zeros(1, channels, before + height + after, before + width + after)
    x[..., before : before + height, before : before + width] = torch.randn(1, channels, height, width)
    return x


def test_interlace_puts_shift_dy_dx_at_f_i_plus_dy_f_j_plus_dx():
    factor = 3

    def coded(dy: int, dx: int) -> torch.Tensor:  # cell (i, j) of shift (dy, dx) holds 1000 dy + 100 dx + 10 i + j
        rows, cols = 4 - (dy > 1), 5 - (dx > 0)  # later shifts may lack the last row / column
        return (1000 * dy + 100 * dx + 10 * torch.arange(rows)[:, None] + torch.arange(cols)[None, :])[None, None]

    dense = interlace([coded(dy, dx) for dy in range(factor) for dx in range(factor)], factor=factor)
    assert dense.shape[-2:] == (3 * 3 + 2, 3 * 4 + 1)
    for ty in range(dense.shape[-2]):
        for tx in range(dense.shape[-1]):
            (dy, i), (dx, j) = (ty % factor, ty // factor), (tx % factor, tx // factor)
            assert dense[0, 0, ty, tx] == 1000 * dy + 100 * dx + 10 * i + j


@pytest.mark.parametrize("factor", [2, 4])
def test_shift_and_stitch_reads_each_cell_from_its_shifted_input(factor):
    model, x = tiny_fcn(pads=(1, 1, 1, 1)), image(45, 53)
    stride = 8 // factor
    with torch.no_grad():
        dense = shift_and_stitch(model, x, factor)
        for ty in range(dense.shape[-2]):
            for tx in range(dense.shape[-1]):
                (dy, i), (dx, j) = (ty % factor, ty // factor), (tx % factor, tx // factor)
                cell = model(x[..., stride * dy :, stride * dx :])[0, :, i, j]
                torch.testing.assert_close(dense[0, :, ty, tx], cell)


@pytest.mark.parametrize("factor", [2, 4])
def test_dense_cells_sit_at_the_centres_of_their_receptive_fields(factor):
    model, x = ones_fcn(), image(26, 30, channels=1).requires_grad_(True)

    def centres(scores: torch.Tensor) -> torch.Tensor:  # (T, U, 2) receptive-field centres (row, col)
        rows = []
        for ty in range(scores.shape[-2]):
            row = []
            for tx in range(scores.shape[-1]):
                (grad,) = torch.autograd.grad(scores[0, 0, ty, tx], x, retain_graph=True)
                support = grad[0, 0].nonzero().float()
                row.append((support.min(0).values + support.max(0).values) / 2)
            rows.append(torch.stack(row))
        return torch.stack(rows)

    coarse_centre = centres(coarse_scores(model, x))[0, 0]  # cell 0 of the stride-4 map
    for dense in (shift_and_stitch(model, x, factor), rarefy(model, factor)(x)):
        cells = [torch.arange(n) for n in dense.shape[-2:]]
        grid = torch.stack(torch.meshgrid(*cells, indexing="ij"), -1)  # (T, U, 2) cell indices
        torch.testing.assert_close(centres(dense), (4 // factor) * grid + coarse_centre)  # cell t on r t + c


@pytest.mark.parametrize("net", ["valid", "padded-last", "ceil", "strided"])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_rarefy_equals_shift_and_stitch_everywhere_when_the_stem_does_not_pad(net, factor):
    model = {"valid": tiny_fcn(), "padded-last": tiny_fcn(pads=(0, 0, 0, 1)),
             "ceil": tiny_fcn(pads=(0, 0, 0, 1), ceil_mode=True), "strided": strided_fcn()}[net]
    for height, width in [(61, 69), (64, 64), (75, 82)]:
        x = image(height, width)
        with torch.no_grad():
            assert_close(rarefy(model, factor)(x), shift_and_stitch(model, x, factor))


@pytest.mark.parametrize("factor", [2, 4])
def test_padded_stem_agrees_where_receptive_fields_lie_inside_the_shifted_input(factor):
    model, x = tiny_fcn(pads=(1, 1, 1, 1), ceil_mode=True), image(77, 83)
    with torch.no_grad():
        literal, rarefied = shift_and_stitch(model, x, factor), rarefy(model, factor)(x)
    assert literal.shape == rarefied.shape
    size, centre = chain_geometry(model)
    first_inside = (size - 1) / 2 - centre  # coarse cell i reads no padding from 8 i >= first_inside on
    inside = [(torch.arange(n) % factor == 0) | (8 * (torch.arange(n) // factor) >= first_inside)
              for n in literal.shape[-2:]]
    mask = inside[0][:, None] & inside[1][None, :]
    assert_close(rarefied[..., mask], literal[..., mask])
    assert (rarefied - literal).abs().max() > 1e-3  # the top/left border does differ
    assert_close(rarefied[..., ::factor, ::factor], coarse_scores(model, x))


# (model, factors, content size, zero margin before, zero margin after): margins wider than the receptive fields
# of the layers before the last rarefied stride (VGG16 and AlexNet pad their input by 100 themselves).
ZERO_BIAS_CASES = [
    ("fcn-alexnet", (2, 4), (37, 45), 32, 0),
    ("fcn32s-lite0", (2, 4), (35, 41), 192, 192),
    ("fcn32s", (2,), (21, 27), 24, 0),
]


@pytest.mark.parametrize("name, factors, content, before, after", ZERO_BIAS_CASES)
def test_real_models_agree_everywhere_when_zero_padding_is_transparent(name, factors, content, before, after):
    model = random_fcn(name, zero_bias=True)
    x = image(*content, margin=(before, after))
    for factor in factors:
        rarefied = rarefy(model, factor)
        with torch.no_grad():
            literal = shift_and_stitch(model, x, factor)
            assert_close(rarefied.dense_scores(x), literal)
            logits = dense_logits(literal, dense_stride=32 // factor, cell_centre=score_centre(model),
                                  height=x.shape[-2], width=x.shape[-1])
            assert_close(rarefied(x), logits)  # (1, K, H, W)


@pytest.mark.parametrize("name, factors", [("fcn-alexnet", (2, 4, 8)), ("fcn32s-lite0", (2, 4, 8))])
def test_real_models_phase_zero_is_the_coarse_map(name, factors):
    model, x = random_fcn(name, zero_bias=False), image(57, 75)
    with torch.no_grad():
        coarse = coarse_scores(model, x)
        for factor in factors:
            assert_close(rarefy(model, factor).dense_scores(x)[..., ::factor, ::factor], coarse)


def test_alexnet_agrees_where_receptive_fields_lie_inside_the_shifted_input():
    model, x, factor = random_fcn("fcn-alexnet", zero_bias=False), image(290, 300), 2
    with torch.no_grad():
        literal, rarefied = shift_and_stitch(model, x, factor), rarefy(model, factor).dense_scores(x)
    size, centre = chain_geometry(model)  # 355, 13 (docs/alignment.md)
    inside = [(torch.arange(n) % factor == 0) | (32 * (torch.arange(n) // factor) + centre >= (size - 1) / 2)
              for n in literal.shape[-2:]]
    mask = inside[0][:, None] & inside[1][None, :]
    assert mask.sum() > mask.numel() // 3
    assert_close(rarefied[..., mask], literal[..., mask])


def test_vgg_fcn32s_rarefied_by_one_is_the_model_and_the_original_is_untouched():
    model, x = random_fcn("fcn32s", zero_bias=False), image(40, 52)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    layers = repr(model)
    with torch.no_grad():
        expected = model(x)
        assert_close(rarefy(model, 1)(x), expected)
        rarefied = rarefy(model, 2)
        assert_close(rarefied.dense_scores(x)[..., ::2, ::2], coarse_scores(model, x))
        assert_close(model(x), expected)
    assert repr(model) == layers and model.pool5.stride == 2 and model.fc6.dilation == (1, 1)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert isinstance(rarefied, RarefiedFCN) and rarefied.net.fc6.dilation == (2, 2)


@pytest.mark.parametrize("name", ["fcn-alexnet", "fcn32s-lite0"])
def test_rarefied_by_one_is_the_model(name):
    model, x = random_fcn(name, zero_bias=False), image(45, 67)
    with torch.no_grad():
        assert_close(rarefy(model, 1)(x), model(x))


def test_skip_models_use_their_score_fr_path_with_a_warning():
    model, x = random_fcn("fcn8s-lite0", zero_bias=False), image(40, 70)
    with pytest.warns(UserWarning, match="score_fr"):
        rarefied = rarefy(model, 4)
    with torch.no_grad():
        assert_close(rarefied.dense_scores(x)[..., ::4, ::4], coarse_scores(model, x))
        assert rarefied(x).shape == (1, NUM_CLASSES, 40, 70)


def test_bad_factors_are_refused():
    with pytest.raises(ValueError, match="dividing"):
        rarefy(tiny_fcn(), 3)
    with pytest.raises(ValueError, match="dividing"):
        shift_and_stitch(tiny_fcn(), image(64, 64), 16)
    with pytest.raises(ValueError, match="conv1"):
        rarefy(build_model("fcn-alexnet-tv", num_classes=2), 16)  # conv1 has stride 4


def test_batching_shifts_does_not_change_the_map():
    model, x = random_fcn("fcn32s-lite0", zero_bias=False), image(50, 40)
    with torch.no_grad():
        assert_close(shift_and_stitch(model, x, 4, batch_size=3), shift_and_stitch(model, x, 4))


@pytest.mark.parametrize("stride, centre", [(16, 12.5), (8, 13.0), (4, 31.0), (1, 0.0)])
def test_dense_logits_interpolate_between_cell_centres(stride, centre):
    cells = 12
    coordinate = stride * torch.arange(cells, dtype=torch.float64) + centre  # the centre of each cell
    dense = (coordinate[:, None] + 0 * coordinate[None, :])[None, None]  # (1, 1, T, T): value = row centre
    logits = dense_logits(dense, dense_stride=stride, cell_centre=centre, height=stride * 10, width=stride * 10)
    rows = torch.arange(stride * 10, dtype=torch.float64)
    interior = (rows >= centre) & (rows <= coordinate[-1])  # between the first and last cell centres
    column = int(centre) + stride  # between two cell centres, where the weights of the columns sum to 1
    torch.testing.assert_close(logits[0, 0, interior, column], rows[interior])


def test_predict_dense_flag_runs_the_rarefied_model(tmp_path):
    assert build_parser().parse_args(["predict", "a.png", "--dense", "4"]).dense == 4
    Image.new("RGB", (50, 37), (90, 120, 30)).save(tmp_path / "a.png")
    meta = ModelMeta(model="fcn32s-lite0", num_classes=3, class_names=("a", "b", "c"),
                     palette=((0, 0, 0), (255, 0, 0), (0, 255, 0)), normalization="lite")
    model = build_model("fcn32s-lite0", num_classes=3)
    (result,) = predict_paths(model, meta, [tmp_path / "a.png"], tmp_path / "out", overlay="none", dense=2)
    assert Image.open(result["labels"]).size == (50, 37)

"""Test-time augmentation: the spec parser, TTAModel against a hand-written loop, and --tta in eval and predict."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fcnseg.checkpoint import ModelMeta, make_checkpoint, model_from_checkpoint, save_atomically
from fcnseg.cli import main
from fcnseg.data import build_dataset, eval_transforms
from fcnseg.data.base import read_image
from fcnseg.data.palettes import generated_palette
from fcnseg.data.transforms import normalize
from fcnseg.dense import rarefy
from fcnseg.models.multitask import SIFTFlowScores
from fcnseg.models.registry import build_model
from fcnseg.predict import predict_paths
from fcnseg.tta import TTAConfig, TTAModel, parse_tta


@pytest.mark.parametrize("spec, flip, scales", [
    ("flip", True, (1.0,)),
    ("flip,scales=0.75,1,1.25", True, (0.75, 1.0, 1.25)),
    ("scales=0.75,1,1.25", False, (0.75, 1.0, 1.25)),
    ("scales=0.5,2,flip", True, (0.5, 2.0)),
    (" Flip , scales=1.5 ", True, (1.5,)),
    ("scales=1", False, (1.0,)),
])
def test_parse_good_specs(spec, flip, scales):
    config = parse_tta(spec)
    assert config == TTAConfig(flip=flip, scales=scales)
    assert parse_tta(config.spec) == config  # the canonical spec reads back


@pytest.mark.parametrize("spec, bad_part", [
    ("", "empty TTA spec"),
    ("flop", "unknown item 'flop'"),
    ("flip,flip", "'flip' given twice"),
    ("flip,0.75", "number '0.75' outside 'scales='"),
    ("scales=", "scale '' is not a number"),
    ("scales=0.75,x1", "unknown item 'x1'"),
    ("scales=0.75,1.2.5", "scale '1.2.5' is not a number"),
    ("scales=0.75,-1", "scale '-1' must be a positive number"),
    ("scales=0", "scale '0' must be a positive number"),
    ("scales=inf", "scale 'inf' must be a positive number"),
    ("scales=1,1.0", "scale 1 given twice"),
    ("scales=1,scales=2", "'scales=' given twice"),
    ("flip,,scales=1", "empty item"),
    ("flip,", "empty item"),
])
def test_parse_bad_specs_name_the_bad_part(spec, bad_part):
    with pytest.raises(ValueError, match=bad_part.replace("(", r"\(")):
        parse_tta(spec)


def test_config_and_model_refuse_bad_scales():
    for scales in ((), (0.0,), (float("nan"),), (1.0, 1.0)):
        with pytest.raises(ValueError):
            TTAConfig(flip=False, scales=scales)
        with pytest.raises(ValueError):
            TTAModel(nn.Identity(), flip=False, scales=scales)


def reference_tta(model, x, *, flip, scales):
    """The average softmax over views, written out: resize, (mirror by index), run, resize back, softmax, unmirror."""
    height, width = x.shape[-2:]
    views = []
    for scale in scales:
        size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
        scaled = x if scale == 1 else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            columns = torch.arange(scaled.shape[-1] - 1, -1, -1)
            logits = model(scaled[..., columns] if mirrored else scaled)
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            exp = torch.exp(logits - logits.amax(1, keepdim=True))
            probabilities = exp / exp.sum(1, keepdim=True)
            views.append(probabilities[..., torch.arange(width - 1, -1, -1)] if mirrored else probabilities)
    return torch.stack(views).mean(0)


def randomized(model, *, seed=0):
    """``model`` with every parameter drawn from a seeded normal (the zoo zero-initializes its score layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def lite():
    return randomized(build_model("fcn32s-lite0", num_classes=3))


@torch.no_grad()
@pytest.mark.parametrize("flip, scales", [(True, (1.0,)), (False, (0.75, 1.0, 1.25)), (True, (0.75, 1.0, 1.25))])
def test_tta_matches_the_hand_written_loop_at_odd_sizes(lite, flip, scales):
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    got = TTAModel(lite, flip=flip, scales=scales)(x)
    assert got.shape == (2, 3, 37, 53)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 37, 53))
    torch.testing.assert_close(got, reference_tta(lite, x, flip=flip, scales=scales), atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_flip_is_a_real_view_and_scale_one_is_the_plain_softmax(lite):
    x = torch.randn(1, 3, 37, 53, generator=torch.Generator().manual_seed(2))
    plain = lite(x).softmax(1)
    torch.testing.assert_close(TTAModel(lite, flip=False, scales=(1.0,))(x), plain, atol=0, rtol=0)
    flipped = TTAModel(lite, flip=True)(x)
    assert (flipped - plain).abs().max() > 1e-3  # the random net is not symmetric: the mirrored view counts
    torch.testing.assert_close(flipped, (plain + lite(x.flip(-1)).softmax(1).flip(-1)) / 2)


@torch.no_grad()
def test_flip_of_a_left_right_symmetric_model_is_its_plain_softmax():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 5, padding=2))
    for layer in (model[0], model[2]):
        layer.weight.copy_((layer.weight + layer.weight.flip(-1)) / 2)  # mirror-symmetric kernels, zero padding
    x = torch.randn(2, 3, 37, 53)
    assert (model(x.flip(-1)).flip(-1) - model(x)).abs().max() < 1e-5  # the model commutes with mirroring
    torch.testing.assert_close(TTAModel(model, flip=True)(x), model(x).softmax(1), atol=1e-6, rtol=1e-5)


class TwoHeads(nn.Module):
    """A tiny multi-head model: SIFT Flow's named tuple of (semantic, geometric) logits from two 1x1 convs."""

    def __init__(self):
        super().__init__()
        self.semantic, self.geometric = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return SIFTFlowScores(self.semantic(x), self.geometric(x))


@torch.no_grad()
def test_multi_head_models_are_averaged_per_head():
    torch.manual_seed(0)
    model = TwoHeads().eval()
    x = torch.randn(1, 3, 37, 53)
    got = TTAModel(model, flip=True, scales=(0.75, 1.0))(x)
    assert isinstance(got, SIFTFlowScores)
    for index, head in enumerate(got):
        expected = reference_tta(lambda v, index=index: model(v)[index], x, flip=True, scales=(0.75, 1.0))
        torch.testing.assert_close(head, expected, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def checkpoint(lite, tmp_path_factory):
    meta = ModelMeta(model="fcn32s-lite0", num_classes=3, class_names=("background", "square", "disc"),
                     palette=generated_palette(3), normalization="lite")
    path = tmp_path_factory.mktemp("tta") / "random.pt"
    save_atomically(make_checkpoint(lite, meta), path)
    return path


def expected_labels(model, shapes, stem, *, flip, scales):
    """The hand-written loop's arg-max for one image of the shapes folder, run by the plain ``model``."""
    image = read_image(shapes / "images" / f"{stem}.png")  # (3, H, W) uint8
    with torch.no_grad():
        probabilities = reference_tta(model, normalize(image, "lite")[None], flip=flip, scales=scales)
    return probabilities[0].argmax(0).numpy()  # (H, W)


def test_eval_cli_with_tta_scores_the_averaged_probabilities(checkpoint, shapes, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(shapes),
                 "--split", "val", "--json", "--tta", "flip"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["tta"] == "flip" and scores["num_images"] == 4
    model, meta = model_from_checkpoint(checkpoint)
    dataset = build_dataset("folder", root=shapes, split="val", transforms=eval_transforms(
        normalization=meta.normalization))
    counts = np.zeros((3, 3), np.int64)  # (truth, prediction)
    for image, mask in dataset:
        with torch.no_grad():
            predicted = reference_tta(model, image[None], flip=True, scales=(1.0,))[0].argmax(0)
        keep = mask != 255
        counts += np.bincount(3 * mask[keep].numpy() + predicted[keep].numpy(), minlength=9).reshape(3, 3)
    union = counts.sum(0) + counts.sum(1) - np.diag(counts)
    present = counts.sum(1) > 0
    mean_iu = float(np.mean(np.diag(counts)[present] / union[present]))
    assert math.isclose(scores["mean_iu"], mean_iu, rel_tol=1e-6)


def test_predict_cli_with_tta_writes_the_averaged_arg_max(checkpoint, shapes, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), str(shapes / "images" / "shape000.png"),
                 str(shapes / "images" / "shape001.png"), "--out", str(out), "--overlay", "none",
                 "--tta", "flip,scales=0.75,1"]) == 0
    assert "shape001" in capsys.readouterr().out
    model, _ = model_from_checkpoint(checkpoint)
    for stem in ("shape000", "shape001"):
        got = np.asarray(Image.open(out / f"{stem}_labels.png"))
        expected = expected_labels(model, shapes, stem, flip=True, scales=(0.75, 1.0))
        assert got.shape == (64, 64)
        assert (got == expected).mean() > 0.99  # the fast module matches the plain one to 1e-4: rare arg-max ties


def test_predict_paths_tta_default_is_unchanged_and_works_with_dense(lite, checkpoint, shapes, tmp_path):
    model, meta = model_from_checkpoint(checkpoint)
    image = [shapes / "images" / "shape002.png"]
    plain = list(predict_paths(model, meta, image, tmp_path / "plain", overlay="none"))
    explicit = list(predict_paths(model, meta, image, tmp_path / "none", overlay="none", tta=None))
    assert plain[0]["classes"] == explicit[0]["classes"]
    config = TTAConfig(flip=True, scales=(0.75, 1.0))
    list(predict_paths(model, meta, image, tmp_path / "dense", overlay="none", dense=2, tta=config))
    got = np.asarray(Image.open(tmp_path / "dense" / "shape002_labels.png"))
    expected = expected_labels(rarefy(model, 2).eval(), shapes, "shape002", flip=True, scales=(0.75, 1.0))
    assert (got == expected).mean() > 0.99


def test_cli_refuses_a_bad_tta_spec(shapes, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--root", str(shapes), "--dataset", "folder", "--tta", "flip,scales=0.75,big"])
    assert exit_info.value.code == 2
    assert "unknown item 'big'" in capsys.readouterr().err

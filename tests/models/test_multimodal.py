"""NYUDv2's multi-modal FCN-32s: early fusion (colour + depth) and late fusion (colour and HHA streams).

The VGG16 models are large, so inputs are small (32x40) and the models are shared between tests.
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fcnseg.checkpoint import ModelMeta, make_checkpoint, model_from_checkpoint
from fcnseg.data import NYUDDataset, normalize, normalize_nyud
from fcnseg.distributed import DistContext, global_loss
from fcnseg.models import FCN32s, build_model
from fcnseg.models.multimodal import (
    EarlyFusionFCN32s,
    LateFusionFCN32s,
    early_fusion_from_rgb,
    late_fusion_from_streams,
)
from fcnseg.training.config import make_config, resolve_recipe
from fcnseg.training.data import build_datasets, modalities_for, stack_nyud
from fcnseg.training.loop import train
from fcnseg.training.losses import loss_terms

H, W = 32, 40
CLASSES = 40


def make_nyud(root: Path) -> Path:
    """Three images in the layout of Gupta et al.'s data.tgz: colour, HHA, 16-bit depth and a label .mat."""
    rng = np.random.default_rng(0)
    for image_id in ("5449", "6140", "6141"):
        labels = np.ones((H, W), dtype=np.uint16)  # wall
        labels[20:] = 2  # floor
        labels[0, :3] = 0  # void
        paths = {name: root / "data" / name / f"img_{image_id}.png" for name in ("images", "hha", "depth")}
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(paths["images"])
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(paths["hha"])
        Image.fromarray(rng.integers(500, 5000, (H, W)).astype(np.uint16)).save(paths["depth"])
        (root / "segmentation").mkdir(exist_ok=True)
        scipy.io.savemat(root / "segmentation" / f"img_{image_id}.mat", {"segmentation": labels})
    (root / "train.txt").write_text("5449\n6140\n")
    (root / "val.txt").write_text("6141\n")
    return root


def scored(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` in eval mode with random (instead of zero) score layers, so that outputs are not all zero."""
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if name.startswith("score"):  # not the (fixed, bilinear) upscore
            torch.nn.init.normal_(param, std=0.01)
    return model.eval()


@pytest.fixture(scope="module")
def streams():
    torch.manual_seed(0)
    color = scored(FCN32s(num_classes=CLASSES), seed=1)
    hha = scored(FCN32s(num_classes=CLASSES), seed=2)
    return color, hha


@pytest.fixture(scope="module")
def nyud(tmp_path_factory):
    return make_nyud(tmp_path_factory.mktemp("nyud"))


def nyud_config(root, out, model, **values):
    return make_config({
        "model": model, "dataset": "nyud", "root": str(root), "out": str(out), "batch_size": 1, "crop_size": 0,
        "scale_range": None, "optimizer": "sgd", "momentum": 0.0, "lr": 1e-3, "workers": 0, **values,
    })


def test_early_fusion_starts_as_the_colour_model_on_zero_depth(streams):
    color, _ = streams
    fused = early_fusion_from_rgb(color).eval()
    assert isinstance(fused, EarlyFusionFCN32s) and fused.conv1_1.weight.shape == (64, 4, 3, 3)
    # The reference's surgery: colour filters copied, the depth filter their mean over the colour channels.
    assert torch.equal(fused.conv1_1.weight[:, :3], color.conv1_1.weight)
    torch.testing.assert_close(fused.conv1_1.weight[:, 3], color.conv1_1.weight.sum(1) / 3)
    rgb = torch.randn(1, 3, H, W)
    with torch.no_grad():
        out = fused(torch.cat([rgb, torch.zeros(1, 1, H, W)], 1))  # (N, 4, H, W): colour, then depth
        assert out.shape == (1, CLASSES, H, W) and out.abs().max() > 0
        torch.testing.assert_close(out, color(rgb), rtol=1e-5, atol=1e-5)
        depth_matters = fused(torch.cat([rgb, torch.ones(1, 1, H, W)], 1))
    assert not torch.allclose(depth_matters, out)
    meta = ModelMeta(model="fcn32s-nyud-rgbd", num_classes=CLASSES, class_names=tuple(map(str, range(CLASSES))),
                     palette=((0, 0, 0),) * CLASSES, normalization="caffe-nyud", in_channels=4)
    reloaded, reloaded_meta = model_from_checkpoint(make_checkpoint(fused, meta))  # checkpoints keep in_channels
    assert isinstance(reloaded, EarlyFusionFCN32s) and reloaded_meta.in_channels == 4


def test_late_fusion_sums_the_streams_scores_and_trains(streams, nyud):
    color, hha = streams
    fused = late_fusion_from_streams(color, hha).eval()
    assert isinstance(fused, LateFusionFCN32s) and fused.in_channels == 6
    names = set(fused.state_dict())
    assert {"color.conv1_1.weight", "hha.fc7.weight", "color.score_fr.weight", "upscore.weight"} <= names
    color_input, hha_input = torch.randn(2, 3, H, W), torch.randn(2, 3, H, W)
    with torch.no_grad():
        out = fused(torch.cat([color_input, hha_input], 1))  # (N, 6, H, W): colour, then HHA
        # The reference's score_fused = 0.5 score_frcolor + 0.5 score_frhha; upsampling and crop are linear.
        expected = 0.5 * color(color_input) + 0.5 * hha(hha_input)
    assert out.shape == (2, CLASSES, H, W)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # A training step on a stacked NYUDv2 sample moves both streams' scores (one VGG16 pair is costly enough).
    config = resolve_recipe(nyud_config(nyud, "unused", "fcn32s-nyud-rgbhha"))
    train_set, _ = build_datasets(config, "caffe-nyud", modalities_for(config, fused))
    image, mask = train_set[0]  # (6, H, W), (H, W)
    before = {name: fused.get_submodule(name).weight.clone() for name in ("color.score_fr", "hha.score_fr")}
    optimizer = torch.optim.SGD([p for p in fused.parameters() if p.requires_grad], lr=1e-6)
    loss, value = global_loss(loss_terms(fused.train()(image[None]), mask[None]), reduction="sum", grad_accum=1,
                              context=DistContext())
    loss.backward()
    optimizer.step()
    assert value > 0 and all(not torch.equal(fused.get_submodule(name).weight, before[name]) for name in before)


def test_zoo_builds_the_fusion_models_with_their_channels():
    with torch.device("meta"):
        assert build_model("fcn32s-nyud-rgbd", num_classes=CLASSES).conv1_1.in_channels == 4
        assert build_model("fcn32s-nyud-rgbhha", num_classes=CLASSES).in_channels == 6
        with pytest.raises(ValueError, match="4 stacked input channels"):
            build_model("fcn32s-nyud-rgbd", num_classes=CLASSES, in_channels=3)


def test_stacked_input_order_and_modalities(nyud):
    inputs, _ = NYUDDataset(nyud, "train", modalities=("color", "depth", "hha"))[0]
    stacked = stack_nyud(inputs, modalities=("color", "hha", "depth"), normalization="caffe-nyud")
    reference = normalize_nyud(inputs)
    assert stacked.shape == (7, H, W)
    torch.testing.assert_close(stacked[:3], normalize(inputs["color"], "caffe-nyud"))  # BGR minus the NYUD mean
    torch.testing.assert_close(stacked[3:6], reference["hha"])
    torch.testing.assert_close(stacked[6:], reference["depth"])
    with torch.device("meta"):
        rgbd = build_model("fcn32s-nyud-rgbd", num_classes=CLASSES)
    config = make_config({"model": "fcn32s-nyud-rgbd", "dataset": "nyud"})
    assert modalities_for(config, rgbd) == ("color", "depth")
    with pytest.raises(ValueError, match="stack 3 channels"):
        modalities_for(make_config({"model": "fcn32s-nyud-rgbd", "dataset": "nyud", "modalities": ["hha"]}), rgbd)


def test_early_fusion_trains_on_stacked_colour_and_depth(nyud, tmp_path):
    result = train(nyud_config(nyud, tmp_path, "fcn32s-nyud-rgbd", iters=2, val_every=2), progress=False)
    assert result["step"] == 2 and 0 <= result["last_scores"]["mean_iu"] <= 1
    assert (tmp_path / "log.csv").read_text().splitlines()[-1].startswith("2,")
    for checkpoint in ("best.pt", "last.pt"):
        (tmp_path / checkpoint).unlink()  # VGG16 checkpoints are 0.5 GB each: leave no copies in pytest's tmp folders

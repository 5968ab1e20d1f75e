"""Weights records (fcnseg.weights): their metadata is the file's, build_model loads exactly the file's tensors,
transforms() is predict's preprocessing, and a checkpoint you trained yourself gets the same record."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, ModelMeta, make_checkpoint, save_atomically
from fcnseg.cli import main
from fcnseg.data.base import read_image
from fcnseg.models import build_model, get_weights, list_weights
from fcnseg.predict import predict_labels
from fcnseg.training.config import TrainConfig, config_to_yaml
from fcnseg.weights import Weights

SHIPPED = "fcn4s-lite1-camvid"
SHIPPED_MODEL = "fcn4s-lite1"
EXAMPLE = DEFAULT_CHECKPOINT.parent / "examples" / "0016E5_07959.png"


@pytest.fixture(scope="module")
def shipped_file() -> dict:
    """The shipped checkpoint, read here without fcnseg's loader."""
    return torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def shipped_model():
    return build_model(SHIPPED_MODEL, weights=SHIPPED)


def test_shipped_record_says_what_the_file_holds(shipped_file):
    weights = get_weights(SHIPPED)
    assert list_weights()[0] is weights
    assert weights.path == DEFAULT_CHECKPOINT and weights.path.is_file()
    meta = shipped_file["meta"]
    assert weights.model_name == shipped_file["model"] == meta["model"]
    assert list(weights.class_names) == meta["class_names"]
    assert [list(color) for color in weights.palette] == meta["palette"]
    assert weights.normalization == meta["normalization"]
    assert weights.num_classes == shipped_file["model_args"]["num_classes"] == len(meta["class_names"])
    assert weights.meta["categories"] == meta["class_names"]
    training = shipped_file["training"]  # what ship_default_model.py recorded of the run
    assert training["step"] == 3300 and round(training["train_seconds"] / 60, 1) == 54.1
    assert "3300 steps" in weights.trained_on and "54.1 training minutes" in weights.trained_on
    assert training["train_splits"] == ["train", "val"] and training["val_held_out"] is False
    (val,) = weights.evaluations
    assert (val.dataset, val.split, val.held_out, val.mean_iu) == ("CamVid", "val", False, 84.77)
    assert weights.meta["_metrics"]["CamVid-val"]["held_out"] is False
    assert "camvid-fcn4s-lite1-trainval.yaml" in weights.recipe
    assert "Apache-2.0" in weights.license and "CamVid" in weights.license


def test_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=f"unknown weights 'voc'.*{SHIPPED}"):
        get_weights("voc")


def test_build_model_loads_the_files_tensors_as_float32(shipped_file, shipped_model):
    stored = shipped_file["state_dict"]
    loaded = shipped_model.state_dict()
    assert set(loaded) == set(stored) and not shipped_model.training
    for key, value in stored.items():
        if value.is_floating_point():
            assert value.dtype == torch.float16 and loaded[key].dtype == torch.float32, key
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key
    by_record = build_model(SHIPPED_MODEL, weights=get_weights(SHIPPED), num_classes=11)
    assert all(torch.equal(by_record.state_dict()[key], loaded[key]) for key in loaded)


def test_weights_of_another_model_or_shape_are_refused():
    with pytest.raises(ValueError, match="are for model 'fcn4s-lite1', not 'fcn8s-lite0'"):
        build_model("fcn8s-lite0", weights=SHIPPED)
    with pytest.raises(ValueError, match="11 classes, not num_classes=21"):
        build_model(SHIPPED_MODEL, weights=SHIPPED, num_classes=21)
    with pytest.raises(ValueError, match="leave out pretrained_backbone"):
        build_model(SHIPPED_MODEL, weights=SHIPPED, pretrained_backbone=True)
    with pytest.raises(TypeError, match="needs num_classes"):
        build_model("fcn8s-lite0")


@pytest.mark.parametrize("mode", ["RGB", "P", "L"])
def test_transforms_give_the_labels_fcnseg_predict_gives(tmp_path, shipped_model, mode):
    with Image.open(EXAMPLE) as photo:
        crop = photo.convert("RGB").crop((100, 90, 240, 190)).convert(mode)  # 140x100: not a multiple of 32
    path = tmp_path / f"crop-{mode}.png"
    crop.save(path)
    weights = get_weights(SHIPPED)
    expected = predict_labels(shipped_model, read_image(path), normalization=weights.normalization)  # (H, W)
    with Image.open(path) as image:
        x = weights.transforms()(image)
    assert x.shape == (3, 100, 140) and x.dtype == torch.float32
    with torch.no_grad():
        labels = shipped_model(x.unsqueeze(0)).argmax(1)[0]  # (H, W)
    assert torch.equal(labels, expected)
    assert len(labels.unique()) > 1  # a real street crop: the comparison is not one constant class


def test_transforms_are_lite_normalization_on_tensors_too():
    transform = get_weights(SHIPPED).transforms()
    pixels = torch.randint(0, 256, (2, 3, 20, 30), dtype=torch.uint8)
    by_hand = (pixels.numpy().astype(np.float32) - 127) / 128  # EfficientNet-Lite's (x - 127) / 128, RGB
    assert torch.allclose(transform(pixels), torch.from_numpy(by_hand))  # (N, 3, H, W) in, (N, 3, H, W) out
    assert torch.equal(transform(pixels[0]), transform(pixels)[0])
    with pytest.raises(TypeError, match="uint8"):
        transform(pixels.float())
    with pytest.raises(ValueError, match="shape"):
        transform(pixels[:, :2])


def train_checkpoint(path, *, train_splits, best_mean_iu) -> torch.nn.Module:
    """A checkpoint as fcnseg train writes best.pt (its keys, from a tiny untrained model)."""
    torch.manual_seed(0)
    model = build_model("fcn8s-lite0", num_classes=3).eval()
    torch.nn.init.normal_(model.score_fr.weight, std=0.1)
    meta = ModelMeta(model="fcn8s-lite0", num_classes=3, class_names=("bg", "square", "disc"),
                     palette=((0, 0, 0), (255, 0, 0), (0, 255, 0)), normalization="lite")
    config = TrainConfig(model="fcn8s-lite0", dataset="folder", train_splits=train_splits, iters=40)
    save_atomically(make_checkpoint(model, meta, optimizer={}, step=40, best_mean_iu=best_mean_iu, train_seconds=90.0,
                                    rng_state=torch.get_rng_state(), config=config_to_yaml(config)), path)
    return model


def test_from_checkpoint_describes_and_loads_your_own_run(tmp_path):
    path = tmp_path / "best.pt"
    trained = train_checkpoint(path, train_splits=("train",), best_mean_iu=0.625)
    weights = Weights.from_checkpoint(path)
    assert (weights.name, weights.model_name, weights.path) == ("best", "fcn8s-lite0", path)
    assert weights.class_names == ("bg", "square", "disc") and weights.palette[1] == (255, 0, 0)
    (val,) = weights.evaluations
    assert (val.dataset, val.split, val.held_out, val.mean_iu) == ("folder", "val", True, 62.5)
    assert "unknown" in weights.license and "40 steps, 1.5 training minutes" in weights.trained_on
    model = build_model("fcn8s-lite0", weights=weights)
    x = weights.transforms()(torch.randint(0, 256, (1, 3, 40, 50), dtype=torch.uint8))
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))


def test_from_checkpoint_marks_training_splits_and_missing_scores(tmp_path):
    trainval = tmp_path / "last.pt"
    train_checkpoint(trainval, train_splits=("train", "val"), best_mean_iu=0.9)
    assert Weights.from_checkpoint(trainval).evaluations[0].held_out is False
    unvalidated = tmp_path / "early.pt"
    train_checkpoint(unvalidated, train_splits=("train",), best_mean_iu=-1.0)
    assert Weights.from_checkpoint(unvalidated).evaluations == ()


def test_from_checkpoint_of_a_bad_file_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as error:
        Weights.from_checkpoint(bad)
    assert str(bad) in str(error.value) and len(str(error.value).splitlines()) == 1


def test_fcnseg_models_lists_the_weights_with_their_scores(capsys):
    assert main(["models", "--size", "64x64"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    line = lines[SHIPPED]
    assert line.split()[1:5] == [SHIPPED_MODEL, "11", f"{DEFAULT_CHECKPOINT.stat().st_size / 1e6:.1f}", "MB"]
    assert "CamVid val: mean IU 84.77" in line and "not held out" in line
    assert "fcn8s" in lines  # the model table is still there


def test_importing_the_models_loads_no_checkpoint_or_data_code_and_makes_no_cycle():
    code = ("import sys, fcnseg.models; "
            "print(sorted(m for m in sys.modules if m in ('fcnseg.weights', 'fcnseg.checkpoint', 'fcnseg.data')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    for first in ("fcnseg.weights", "fcnseg.checkpoint"):  # either imported first: no partially initialized module
        subprocess.run([sys.executable, "-c", f"import {first}; from fcnseg.models import get_weights"], check=True)


def test_a_retired_weights_name_says_what_replaced_it():
    with pytest.raises(ValueError, match="'fcn8s-lite0-camvid' are no longer shipped: .*replaced by fcn8s-lite1-camvid"):
        get_weights("fcn8s-lite0-camvid")
    with pytest.raises(ValueError, match="'fcn8s-lite1-camvid' are no longer shipped: .*replaced by fcn4s-lite1-camvid"):
        get_weights("fcn8s-lite1-camvid")

"""Acceptance: train a small FCN on a tiny data set of coloured shapes, evaluate, predict, and resume
an interrupted run to exactly the uninterrupted run's weights."""

import json
import math

import pytest
import torch
from PIL import Image

from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.cli import main
from fcnseg.training.config import make_config
from fcnseg.training.loop import TrainingDiverged, train


def shapes_config(root, out, **changes):
    values = dict(
        model="fcn8s-lite0", dataset="folder", root=str(root), out=str(out), iters=60, batch_size=4, crop_size=64,
        scale_range=None, lr=1e-2, val_every=30, workers=0, seed=0,
    )
    values.update(changes)
    return make_config(values)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(shapes_config(shapes, out), progress=False)
    return out, result


def test_training_learns_the_shapes(trained):
    out, result = trained
    assert result["step"] == 60
    assert result["best_mean_iu"] > 0.6  # chance (always background) scores about 0.26 here
    for name in ("last.pt", "best.pt", "log.csv", "config.yaml", "curves.png"):
        assert (out / name).is_file(), name
    assert load_checkpoint(out / "last.pt")["meta"]["class_names"] == ["background", "square", "disc"]


def test_eval_cli_json(trained, shapes, capsys):
    out, result = trained
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--dataset", "folder", "--root", str(shapes),
                 "--split", "val", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0 <= scores["mean_iu"] <= 1
    assert math.isclose(scores["mean_iu"], result["best_mean_iu"], rel_tol=1e-6)


def test_predict_cli_writes_palette_labels_and_overlays(trained, shapes, tmp_path, capsys):
    out, _ = trained
    predictions = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(out / "best.pt"), str(shapes / "images"), "--out", str(predictions),
                 "--overlay", "side-by-side"]) == 0
    labels = Image.open(predictions / "shape000_labels.png")
    assert labels.mode == "P" and labels.size == (64, 64)
    assert len(list(predictions.glob("*_labels.png"))) == 20
    assert "shape019" in capsys.readouterr().out
    plain = tmp_path / "plain"
    assert main(["predict", "--checkpoint", str(out / "best.pt"), str(shapes / "images" / "shape000.png"), "--out",
                 str(plain), "--overlay", "side-by-side", "--legend", "none"]) == 0
    bare = Image.open(plain / "shape000_overlay.png")
    assert bare.size == (3 * 64, 64)  # photo | colours | blend
    with_legend = Image.open(predictions / "shape000_overlay.png").convert("RGB")
    assert with_legend.width * with_legend.height > 3 * 64 * 64  # the legend adds room ...
    assert with_legend.crop((0, 0, 3 * 64, 64)).tobytes() == bare.convert("RGB").tobytes()  # ... beside the picture


def test_resume_reproduces_the_uninterrupted_run_exactly(trained, shapes, tmp_path):
    out, _ = trained
    interrupted = tmp_path / "interrupted"
    train(shapes_config(shapes, interrupted, stop_after=40), progress=False)
    assert load_checkpoint(interrupted / "last.pt")["step"] == 40
    result = train(shapes_config(shapes, interrupted), resume=True, progress=False)
    assert result["step"] == 60
    expected = load_checkpoint(out / "last.pt")["state_dict"]
    got = load_checkpoint(interrupted / "last.pt")["state_dict"]
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_refuses_to_overwrite_a_run_and_stops_on_nan(shapes, trained, tmp_path):
    out, _ = trained
    with pytest.raises(FileExistsError, match="--resume"):
        train(shapes_config(shapes, out), progress=False)
    diverging = dict(lr=1e30, optimizer="sgd", iters=5, val_every=2)
    with pytest.raises(TrainingDiverged, match=r"The last good checkpoint is .*nan/last\.pt"):
        train(shapes_config(shapes, tmp_path / "nan", checkpoint_every=1, **diverging), progress=False)
    with pytest.raises(TrainingDiverged, match="No checkpoint was written yet"):  # validation writes only best.pt
        train(shapes_config(shapes, tmp_path / "nan_early", **diverging), progress=False)


def test_bad_data_is_a_clear_cli_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert main(["train", "--model", "fcn8s-lite0", "--dataset", "folder", "--root", str(tmp_path),
                 "--out", str(tmp_path / "run")]) == 2
    assert "classes.txt" in capsys.readouterr().err


def test_checkpoint_from_training_loads_for_inference(trained):
    out, _ = trained
    model, meta = model_from_checkpoint(out / "best.pt")
    assert meta.normalization == "lite" and meta.num_classes == 3
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 33, 47)).shape == (1, 3, 33, 47)


def test_channels_last_training_follows_the_same_trajectory(shapes, tmp_path):
    # Same data, seed and step in both memory layouts: the weights agree up to float summation order. One step
    # only: AdamW's sign-like first updates turn summation-order noise in near-zero gradients into lr-sized steps.
    runs = {}
    for layout in (False, True):
        out = tmp_path / f"channels_last_{layout}"
        train(shapes_config(shapes, out, iters=1, val_every=1, channels_last=layout), progress=False)
        runs[layout] = load_checkpoint(out / "last.pt")["state_dict"]
    for key, value in runs[False].items():
        torch.testing.assert_close(runs[True][key], value, rtol=1e-3, atol=1e-3, msg=key)

"""Every bad input a user meets is one clear line naming the file and the problem, exit code != 0, no traceback;
and predict reads photos as shown, never loses a result to a shared output name, and survives one bad image."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from photos import photo, save_16bit_png, save_exif_rotated_jpeg
from PIL import Image

from fcnseg.checkpoint import DEFAULT_CHECKPOINT, ModelMeta, load_checkpoint, make_checkpoint, model_from_checkpoint
from fcnseg.cli import build_parser, main, parse_command_line
from fcnseg.models.registry import build_model
from fcnseg.predict import predict_labels, predict_paths
from fcnseg.serve.segment import decode_image

ROOT = Path(__file__).resolve().parents[1]
NO_DAC = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


def run_cli(*args: str, env: dict | None = None, drop_root_powers: bool = False) -> subprocess.CompletedProcess:
    """``python -m fcnseg ARGS`` in a subprocess; as root, optionally without the capabilities that override file
    permissions, so a read-only folder is read-only."""
    prefix = NO_DAC if drop_root_powers and os.geteuid() == 0 else []
    environment = {**os.environ, "FCNSEG_DEBUG": "", **(env or {})}
    return subprocess.run([*prefix, sys.executable, "-m", "fcnseg", *args], check=False, capture_output=True,
                          text=True, cwd=ROOT, env=environment, timeout=300)


def label_indices(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)  # (H, W) class indices


def one_error_line(stderr: str, *expected: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    for text in expected:
        assert text in lines[0], stderr
    return lines[0]


@pytest.fixture(scope="module")
def shipped():
    return model_from_checkpoint(DEFAULT_CHECKPOINT)


# ---------------------------------------------------------------- photos as shown, through predict and serve


def test_exif_rotated_and_16bit_photos_segment_as_their_plain_upright_copies(tmp_path, shipped, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shown = save_exif_rotated_jpeg(inputs / "phone.jpg", photo(96, 72))
    Image.fromarray(shown).save(inputs / "phone_upright.png")
    grey = np.array(Image.fromarray(photo(96, 72)).convert("L"))
    save_16bit_png(inputs / "wide.png", grey)
    Image.fromarray(grey).save(inputs / "wide_8bit.png")
    assert main(["predict", str(inputs), "--out", str(out), "--overlay", "none"]) == 0
    capsys.readouterr()

    model, meta = shipped
    for name, plain in (("phone", "phone_upright"), ("wide", "wide_8bit")):
        labels = label_indices(out / f"{name}_labels.png")
        assert labels.shape == (72, 96)  # the shown size, not the stored (96, 72)
        np.testing.assert_array_equal(labels, label_indices(out / f"{plain}_labels.png"))
        served = decode_image((inputs / f"{name}{'.jpg' if name == 'phone' else '.png'}").read_bytes(),
                              max_pixels=10**6)
        np.testing.assert_array_equal(predict_labels(model, served, normalization=meta.normalization).numpy(),
                                      labels)
    assert len(np.unique(label_indices(out / "wide_labels.png"))) > 1  # a scene, not an all-white "Sky 100%"


# ---------------------------------------------------------------- predict's outputs


def tiny_model():
    meta = ModelMeta(model="fcn32s-lite0", num_classes=3, class_names=("a", "b", "c"),
                     palette=((0, 0, 0), (255, 0, 0), (0, 255, 0)), normalization="lite")
    return build_model("fcn32s-lite0", num_classes=3), meta


def test_predict_paths_writes_eagerly_and_mirrors_subfolders(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (90, 120, 30)).save(folder / "x.png")
    Image.new("RGB", (40, 30), (9, 12, 3)).save(folder / "sub" / "x.png")
    (folder / "notes.txt").write_text("not an image")
    model, meta = tiny_model()
    results = predict_paths(model, meta, [folder], tmp_path / "out", overlay="blend")  # not a lazy generator
    assert isinstance(results, list) and [r["error"] for r in results] == [None, None]
    for stem in ("x", "sub/x"):
        assert Image.open(tmp_path / "out" / f"{stem}_labels.png").size == (40, 30)
        assert (tmp_path / "out" / f"{stem}_overlay.png").is_file()


def test_two_inputs_with_one_output_name_are_refused_before_any_work(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.jpg")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a"), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "a/x.jpg and ", "a/x.png", "out/x_labels.png", "separate --out")
    assert main(["predict", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "a/x.png and ", "b/x.png -> ", "out/x_labels.png")
    assert not list(out.glob("**/*.png"))


def test_a_corrupt_image_is_named_and_skipped_and_the_run_exits_1(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a", "c"):
        Image.fromarray(photo(48, 32)).save(folder / f"{name}.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--overlay", "none"]) == 1
    captured = capsys.readouterr()
    one_error_line(captured.err, f"cannot read image {folder / 'b.png'}", "skipped")
    assert "1 of 3 images failed" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.png", "c_labels.png", "manifest.jsonl"]
    assert "a.png" in captured.out and "c.png" in captured.out
    errors = [json.loads(line)["error"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert errors[0] is None and "b.png" in errors[1] and errors[2] is None  # the manifest names the bad file too


@pytest.mark.parametrize("args, message", [
    (["--alpha", "5"], "argument --alpha: must be in [0, 1]"),
    (["--alpha", "-1"], "argument --alpha: must be in [0, 1]"),
    (["--dense", "0"], "argument --dense: must be a positive integer"),
    (["--dense", "-2"], "argument --dense: must be a positive integer"),
])
def test_predict_refuses_bad_alpha_and_dense(args, message, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["predict", "x.png", *args])
    assert caught.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------- unwritable outputs (as root: capabilities dropped)


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv")
@pytest.mark.parametrize("command", [
    ["predict", "fcnseg/assets/examples/0016E5_07997.png", "--out", "{ro}"],
    ["predict", "fcnseg/assets/examples/0016E5_07997.png", "--out", "{ro}/sub"],
    ["export", "--out", "{ro}/model.onnx"],
    ["heatmap", "fcnseg/assets/examples/0016E5_07997.png", "--out", "{ro}/heat.png"],
])
def test_an_unwritable_output_folder_is_one_line_before_any_work(tmp_path, command):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    result = run_cli(*(arg.format(ro=read_only) for arg in command), drop_root_powers=True)
    assert result.returncode == 2
    one_error_line(result.stderr, str(read_only), "permission denied")
    assert list(read_only.iterdir()) == []


# ---------------------------------------------------------------- configs, overrides, checkpoints, data


def test_yaml_syntax_errors_name_the_file_or_the_override(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model: fcn8s-lite0\nlr: [0.1\n")
    assert main(["train", "--config", str(config)]) == 2
    one_error_line(capsys.readouterr().err, f"{config}: YAML syntax error at line 3, column 1")
    assert main(["train", "--root", str(tmp_path), "lr=[0.1"]) == 2
    one_error_line(capsys.readouterr().err, "override 'lr=[0.1': the value '[0.1' is not valid YAML")


def test_overrides_are_accepted_after_flags_and_unknown_flags_still_refused(capsys):
    args = parse_command_line(build_parser(), ["train", "--root", "r", "crop_size=64", "--iters", "1", "lr=0.1"])
    assert args.overrides == ["crop_size=64", "lr=0.1"] and args.iters == 1
    with pytest.raises(SystemExit) as caught:
        parse_command_line(build_parser(), ["train", "--root", "r", "lr=0.1", "--bogus", "2"])
    assert caught.value.code == 2 and "unrecognized arguments: --bogus 2" in capsys.readouterr().err


def test_train_without_arguments_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "usage: fcnseg train" in err and "give the data set's folder: --root" in err


@pytest.mark.parametrize("content, problem", [
    (b"garbage, not a checkpoint", "the file is not a PyTorch file"),
    ("truncated", "the file is truncated or corrupt"),
])
def test_a_garbage_checkpoint_is_one_line_without_pytorchs_advice(tmp_path, content, problem):
    path = tmp_path / "model.pt"
    if content == "truncated":
        content = (DEFAULT_CHECKPOINT).read_bytes()[:5000]
    path.write_bytes(content)
    result = run_cli("predict", "fcnseg/assets/examples/0016E5_07997.png", "--checkpoint", str(path),
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    line = one_error_line(result.stderr, f"{path}: not a readable fcnseg checkpoint: {problem}")
    assert "weights_only" not in result.stderr and "file an issue" not in result.stderr, line
    debug = run_cli("predict", "fcnseg/assets/examples/0016E5_07997.png", "--checkpoint", str(path),
                    "--out", str(tmp_path / "out"), env={"FCNSEG_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


def test_folder_data_errors_say_what_to_do(tmp_path, capsys):
    missing = tmp_path / "nosuchdir"
    assert main(["train", "--dataset", "folder", "--root", str(missing), "--out", str(tmp_path / "run")]) == 2
    one_error_line(capsys.readouterr().err, f"data set root {missing} does not exist")
    root = tmp_path / "data"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    Image.new("RGB", (8, 8)).save(root / "images" / "s.png")
    Image.new("L", (8, 8)).save(root / "masks" / "s.png")
    assert main(["train", "--model", "fcn32s-lite0", "--dataset", "folder", "--root", str(root),
                 "--out", str(tmp_path / "run")]) == 2
    one_error_line(capsys.readouterr().err, f"missing list file {root / 'train.txt'}",
                   "train_split=all val_split=all")


def test_init_weights_from_an_unrelated_model_is_an_error_naming_how_many_fit(tmp_path, capsys, shapes):
    own = build_model("fcn8s-lite0", num_classes=3).state_dict()
    key = next(iter(own))
    meta = ModelMeta(model="fcn-googlenet", num_classes=3, class_names=("a", "b", "c"),
                     palette=((0, 0, 0),) * 3, normalization="imagenet")
    unrelated = make_checkpoint(torch.nn.Module(), meta)
    unrelated["state_dict"] = {key: own[key], **{f"inception{i}.weight": torch.zeros(2) for i in range(16)}}
    path = tmp_path / "unrelated.pt"
    torch.save(unrelated, path)
    assert load_checkpoint(path)["model"] == "fcn-googlenet"
    assert main(["train", "--model", "fcn8s-lite0", "--dataset", "folder", "--root", str(shapes), "--iters", "1",
                 "--out", str(tmp_path / "run"), f"init_weights={path}"]) == 2
    one_error_line(capsys.readouterr().err, f"{path}: only 1 of the 17 tensors of this fcn-googlenet checkpoint fit "
                                            "fcn8s-lite0")


def test_an_error_in_a_data_loader_worker_is_one_line():
    """DataLoader re-raises a worker's exception with the worker's traceback in its message; the CLI keeps the
    original error's own line."""
    import torch.utils.data

    from fcnseg.cli import describe_error
    from fcnseg.data.base import DataError

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise DataError("data/img_0001.png: mask is 40x60 but the image is 60x40")

    with pytest.raises(DataError) as caught:
        next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))
    assert "Traceback" in str(caught.value)  # what torch re-raises
    assert describe_error(caught.value) == "data/img_0001.png: mask is 40x60 but the image is 60x40"

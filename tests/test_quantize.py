"""int8 quantization: the file carries fcnseg's metadata, its logits track the float model's (the independent
computation), and predict and eval take it; files that are not fcnseg int8 files and options that do not apply
are refused in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from scorers import SHAPES_META, random_scorer

from fcnseg.checkpoint import CheckpointError, make_checkpoint
from fcnseg.cli import main
from fcnseg.data.base import DataError, read_image
from fcnseg.data.transforms import normalize
from fcnseg.export import export_onnx
from fcnseg.inference.onnx_model import MissingPackageError, OnnxSegmenter, load_quantized, read_metadata
from fcnseg.outputs import OutputError
from fcnseg.quantize import calibration_images, quantize_checkpoint

META = SHAPES_META


@pytest.fixture(scope="module")
def scorer():
    return random_scorer().eval()


@pytest.fixture(scope="module")
def checkpoint_path(scorer, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    torch.save(make_checkpoint(scorer, META), path)
    return path


@pytest.fixture(scope="module")
def int8_path(checkpoint_path, shapes, tmp_path_factory):
    """The scorer quantized on 8 of the shapes' 20 images (calibration-like: the same generator as val)."""
    out = tmp_path_factory.mktemp("int8") / "model-int8.onnx"
    return quantize_checkpoint(checkpoint_path, calibration=[shapes / "images"], out=out, num_images=8)


def test_metadata_round_trips(int8_path, shapes):
    model, meta = load_quantized(int8_path, runtime="onnxruntime")
    assert meta == META
    assert isinstance(model, OnnxSegmenter) and model.runtime == "onnxruntime"
    calibration = read_metadata(int8_path)["calibration"]
    assert calibration["method"] == "minmax"
    spread = sorted((shapes / "images").glob("*.png"))  # 20 images, every 2.5th of them
    assert calibration["images"] == [str(spread[i]) for i in (0, 2, 5, 7, 10, 12, 15, 17)]
    assert calibration_images([shapes / "images"], num_images=50) == spread  # no more than there are


def test_int8_logits_track_the_float_model(scorer, int8_path, shapes):
    quantized, _ = load_quantized(int8_path, runtime="onnxruntime")
    images = sorted((shapes / "images").glob("*.png"))[-4:]  # the val images: not used for calibration
    x = torch.stack([normalize(read_image(path), "lite") for path in images])  # (4, 3, 64, 64)
    with torch.no_grad():
        expected = scorer(x)  # (4, 3, 64, 64): the float model, eager
        got = quantized.eval().to("cpu")(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    correlation = np.corrcoef(got.flatten().numpy(), expected.flatten().numpy())[0, 1]
    assert agreement > 0.9 and correlation > 0.95, (agreement, correlation)
    other_size = torch.randn(1, 3, 45, 70)  # dynamic height and width survive quantization
    assert quantized(other_size).shape == (1, 3, 45, 70)


def int8_weights_and_float_convtranspose(path) -> tuple[list[np.ndarray], list[bool]]:
    """The file's int8 initializers (the quantized weights), and for each ConvTranspose node whether its weight is
    a float initializer (the node left in float)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    int8 = [numpy_helper.to_array(tensor) for tensor in graph.initializer if tensor.data_type == onnx.TensorProto.INT8]
    float_upsampling = [node.input[1] in initializers
                        and initializers[node.input[1]].data_type == onnx.TensorProto.FLOAT
                        for node in graph.node if node.op_type == "ConvTranspose"]
    return int8, float_upsampling


def test_weights_cannot_saturate_int16_pairs_by_default(int8_path, checkpoint_path, shapes, tmp_path):
    """Without VNNI, x86 int8 convolutions sum two uint8 x int8 products in int16 (vpmaddubsw), saturating above
    32767: the default 7-bit weights keep 2 * 255 * |w| below it, 8-bit ones (``reduce_range=False``) do not. The
    fixed upsamplings stay float either way."""
    weights, float_upsampling = int8_weights_and_float_convtranspose(int8_path)
    assert weights and float_upsampling and all(float_upsampling)
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert 32 < largest <= 64 and 2 * 255 * largest <= 32767
    assert read_metadata(int8_path)["calibration"]["reduce_range"] is True
    full = quantize_checkpoint(checkpoint_path, calibration=[shapes / "images"], out=tmp_path / "full.onnx",
                               num_images=2, reduce_range=False)
    full_weights, _ = int8_weights_and_float_convtranspose(full)
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in full_weights)
    assert largest >= 127 and 2 * 255 * largest > 32767


@pytest.fixture(autouse=True)
def onnxruntime_in_process(monkeypatch):
    """In this process every int8 file runs in onnxruntime, as where OpenVINO is not installed: OpenVINO's
    thread pool would stay alive in the test process, and a later fork (a DataLoader worker) may then deadlock."""
    monkeypatch.setattr("fcnseg.inference.onnx_model._has_openvino", lambda: False)


OPENVINO_CHECK = """
import sys, torch
from fcnseg.inference.onnx_model import OnnxSegmenter, load_quantized
path = sys.argv[1]
x = torch.randn(2, 3, 64, 64)
by_onnxruntime = load_quantized(path, runtime="onnxruntime")[0](x)
by_openvino = load_quantized(path, runtime="openvino")[0](x)
agreement = (by_onnxruntime.argmax(1) == by_openvino.argmax(1)).float().mean().item()
assert agreement > 0.95, agreement
one_static = OnnxSegmenter(path, runtime="openvino", max_shapes=1)  # other shapes: the dynamic graph
for shape in ((1, 3, 64, 64), (1, 3, 40, 72), (2, 3, 33, 50)):
    assert one_static(torch.randn(*shape)).shape == (shape[0], 3, *shape[2:])
print("ok")
"""


def test_openvino_runs_the_same_file(int8_path):
    pytest.importorskip("openvino")
    result = subprocess.run([sys.executable, "-c", OPENVINO_CHECK, str(int8_path)], check=False, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_predict_and_eval_take_the_int8_file(int8_path, shapes, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(shapes / "images" / "shape000.png"), "--checkpoint", str(int8_path),
                 "--out", str(out), "--tta", "flip"]) == 0
    assert (out / "shape000_labels.png").is_file()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(int8_path), "--dataset", "folder", "--root", str(shapes),
                 "--split", "val", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["num_images"] == 4 and 0 <= scores["mean_iu"] <= 1


def test_options_that_do_not_apply_are_refused(int8_path, shapes, tmp_path, capsys):
    for flag in (["--dense", "2"], ["--bf16"]):
        assert main(["predict", str(shapes / "images" / "shape000.png"), "--checkpoint", str(int8_path),
                     "--out", str(tmp_path / "out"), *flag]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and flag[0] in error and str(int8_path) in error


def test_an_onnx_file_without_fcnseg_metadata_is_refused(scorer, tmp_path, capsys):
    plain = tmp_path / "plain.onnx"
    export_onnx(scorer, plain)
    with pytest.raises(CheckpointError, match="not an fcnseg int8 ONNX file"):
        load_quantized(plain)
    capsys.readouterr()  # the export's tracer warnings, when pytest does not collect them
    assert main(["eval", "--checkpoint", str(plain), "--dataset", "folder", "--root", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(plain) in error and "fcnseg quantize" in error


def test_bad_calibration_and_output_are_clear(checkpoint_path, shapes, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no calibration images"):
        quantize_checkpoint(checkpoint_path, calibration=[tmp_path / "empty"], out=tmp_path / "q.onnx")
    with pytest.raises(DataError, match="no such calibration"):
        quantize_checkpoint(checkpoint_path, calibration=[tmp_path / "missing"], out=tmp_path / "q.onnx")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError):
        quantize_checkpoint(checkpoint_path, calibration=[shapes / "images"], out=blocker / "q.onnx")


def test_quantize_command_names_what_it_wrote(checkpoint_path, shapes, tmp_path, capsys):
    out = tmp_path / "cli-int8.onnx"
    assert main(["quantize", str(checkpoint_path), "--calibration", str(shapes / "images" / "shape00[0-3].png"),
                 "--out", str(out), "--images", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "MB" in printed and "on 2 images" in printed
    assert "shape000.png" in printed and "shape002.png" in printed


def test_serve_takes_the_int8_file(int8_path, shapes):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx2")
    from starlette.testclient import TestClient

    from fcnseg.serve import create_app, load_serving_model

    model, meta = load_serving_model(int8_path)
    assert isinstance(model, OnnxSegmenter) and meta == META
    with pytest.raises(ValueError, match="--bf16 does not apply"):
        load_serving_model(int8_path, bf16=True)
    with TestClient(create_app(model, meta)) as client:
        data = (shapes / "images" / "shape000.png").read_bytes()
        answer = client.post("/v1/segment", files={"image": ("shape000.png", data, "image/png")})
    assert answer.status_code == 200, answer.text
    assert {entry["name"] for entry in answer.json()["classes"]} <= set(META.class_names)


def test_missing_onnxruntime_names_the_extra(checkpoint_path, shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MissingPackageError, match=r"pip install 'fcnseg\[export\]'"):
        quantize_checkpoint(checkpoint_path, calibration=[shapes / "images"], out=tmp_path / "q.onnx")
    assert main(["quantize", str(checkpoint_path), "--calibration", str(shapes / "images"),
                 "--out", str(tmp_path / "q.onnx")]) == 2
    assert "fcnseg[export]" in capsys.readouterr().err

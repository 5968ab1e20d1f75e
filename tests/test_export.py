"""fcnseg.export: ONNX (dynamic batch, height, width) in onnxruntime and TorchScript match PyTorch."""

import pytest
import torch

from fcnseg.checkpoint import default_checkpoint_path, model_from_checkpoint
from fcnseg.cli import main
from fcnseg.export import ExportError, export_onnx, export_torchscript
from fcnseg.models import FCNAlexNet
from fcnseg.models.efficientnet_lite import SameConv2d

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def shipped_model():
    model, _ = model_from_checkpoint(default_checkpoint_path())
    return model


def run_onnx(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])


def assert_onnx_matches(model, path, sizes):
    for batch, (height, width) in zip((1, 3), sizes):
        x = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(run_onnx(path, x), expected, rtol=1e-4, atol=1e-4)


def test_shipped_lite_model_onnx_matches_at_sizes_other_than_the_example(shipped_model, tmp_path):
    path = export_onnx(shipped_model, tmp_path / "lite.onnx", example_size=(1, 3, 64, 96))
    assert SameConv2d.forward.__qualname__ == "SameConv2d.forward"  # the export-time swap is undone
    assert_onnx_matches(shipped_model, path, [(131, 97), (50, 77)])


def test_vgg_family_reference_model_onnx_matches(tmp_path):
    torch.manual_seed(0)
    model = FCNAlexNet(num_classes=3).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "upscore" not in name:
                param.normal_(0, 0.01)
    path = export_onnx(model, tmp_path / "alexnet.onnx", example_size=(1, 3, 40, 52), check_sizes=[(33, 45)])
    assert_onnx_matches(model, path, [(47, 61), (35, 70)])


def test_torchscript_round_trip(shipped_model, tmp_path):
    path = export_torchscript(shipped_model, tmp_path / "lite.ts")
    loaded = torch.jit.load(path)
    x = torch.randn(2, 3, 70, 45)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), shipped_model(x), rtol=1e-4, atol=1e-4)


def test_a_size_bound_graph_is_reported(tmp_path):
    class SizeBound(torch.nn.Module):
        def forward(self, x):
            return x[..., : int(x.shape[-2]) // 2, :]  # int() bakes the example's size in

    with pytest.raises(ExportError, match="example size"):
        export_onnx(SizeBound(), tmp_path / "bound.onnx", example_size=(1, 3, 20, 20), check_sizes=[(30, 30)])


def test_cli_export_defaults_to_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out

"""Caffe weight import: wire format, both layer formats, an end-to-end FCN-AlexNet round trip, errors.

Blobs are encoded by hand (protobuf's wire format, written out below) rather than through the
schema under test, so the field numbers in ``fcnseg.caffe.proto`` are checked independently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fcnseg.caffe import caffe_to_state_dict, convert_caffemodel, proto, read_caffemodel
from fcnseg.models import BilinearUpsample, FCNAlexNet, bilinear_kernel, build_model

LEN = 2  # wire type of length-delimited fields (strings, messages, packed repeated)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag ``(number << 3) | 2``, length, payload."""
    return _varint(number << 3 | LEN) + _varint(len(payload)) + payload


def encode_blob(array: np.ndarray) -> bytes:
    """BlobProto { data = 5 [packed float]; shape = 7 { dim = 1 [packed int64] } }, written byte by byte."""
    dims = b"".join(_varint(d) for d in array.shape)
    return _field(5, array.astype("<f4").tobytes()) + _field(7, _field(1, dims))


def write_caffemodel(path, model: nn.Module, *, extra_fc8: bool = True) -> None:
    """A caffemodel as Caffe writes one: a data layer without blobs, one layer per conv/deconv, and fc8."""
    net = proto.NetParameter(name="test-net")
    net.layer.add(name="data", type="Python", top=["data", "label"])
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        kind = "Deconvolution" if isinstance(module, nn.ConvTranspose2d) else "Convolution"
        layer = net.layer.add(name=name, type=kind)
        for tensor in (module.weight, module.bias):
            if tensor is not None:
                layer.blobs.add().MergeFromString(encode_blob(tensor.detach().numpy()))
    if extra_fc8:
        layer = net.layer.add(name="fc8", type="InnerProduct")
        layer.blobs.add().MergeFromString(encode_blob(np.ones((3, 4), np.float32)))
    path.write_bytes(net.SerializeToString())


class TinyFCN(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.score_fr = nn.Conv2d(4, num_classes, 1)
        self.upscore = BilinearUpsample(num_classes, stride=2, kernel_size=4)


def test_blob_wire_format_matches_hand_encoding():
    array = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    blob = proto.BlobProto.FromString(encode_blob(array))
    assert list(blob.shape.dim) == [2, 3]
    np.testing.assert_array_equal(np.asarray(blob.data, np.float32), array.ravel())
    built = proto.BlobProto(data=array.ravel().tolist())
    built.shape.dim.extend([2, 3])
    assert built.SerializeToString() == encode_blob(array)  # fields serialize in number order: 5, then 7


def test_hand_encoded_net_reads(tmp_path):
    # NetParameter.layer = 100 (tag bytes A2 06); LayerParameter name = 1, type = 2, blobs = 7.
    weight = np.random.default_rng(0).standard_normal((2, 3, 1, 1)).astype(np.float32)
    layer = _field(1, b"score_fr") + _field(2, b"Convolution") + _field(7, encode_blob(weight))
    layer += _field(7, encode_blob(np.array([0.5, -1.0], np.float32)))
    data_layer = _field(1, b"data") + _field(2, b"Input")
    path = tmp_path / "hand.caffemodel"
    path.write_bytes(_field(1, b"hand") + _field(100, data_layer) + _field(100, layer))
    assert _field(100, b"")[:2] == b"\xa2\x06"
    blobs = read_caffemodel(path)
    assert list(blobs) == ["score_fr"]
    np.testing.assert_array_equal(blobs["score_fr"][0], weight)
    np.testing.assert_array_equal(blobs["score_fr"][1], [0.5, -1.0])


@pytest.fixture(scope="module")
def alexnet_caffemodel(tmp_path_factory):
    torch.manual_seed(0)
    model = FCNAlexNet(num_classes=5)
    with torch.no_grad():  # score_fr starts at zero and upscore bilinear: make them distinctive
        model.score_fr.weight.normal_(0, 0.01)
        model.score_fr.bias.normal_(0, 0.1)
        model.upscore.weight.normal_(0, 0.01)
    path = tmp_path_factory.mktemp("caffe") / "fcn-alexnet.caffemodel"
    write_caffemodel(path, model)
    return path, model


def test_fcn_alexnet_round_trip(alexnet_caffemodel, tmp_path):
    path, original = alexnet_caffemodel
    out = tmp_path / "out" / "fcn-alexnet.pt"
    with pytest.warns(UserWarning, match="fc8"):
        summary = convert_caffemodel(path, out, model_name="fcn-alexnet")
    assert summary["num_classes"] == 5  # inferred from score_fr
    assert summary["dropped"] == ["fc8"]
    assert summary["converted"] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "score_fr", "upscore"]
    assert summary["kept_bilinear"] == []
    assert [p.name for p in out.parent.iterdir()] == ["fcn-alexnet.pt"]  # no temporary left behind

    checkpoint = torch.load(out, map_location="cpu", weights_only=True)
    assert checkpoint["format"] == "fcnseg-checkpoint" and checkpoint["format_version"] == 1
    assert checkpoint["model"] == "fcn-alexnet" and checkpoint["model_args"] == {"num_classes": 5}
    assert checkpoint["source"] == "caffe:fcn-alexnet.caffemodel"
    fresh = build_model(checkpoint["model"], **checkpoint["model_args"])
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    for key, value in original.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        expected, actual = original.eval()(x), fresh.eval()(x)
    assert actual.shape == (1, 5, 40, 50) and expected.abs().sum() > 0
    assert torch.equal(actual, expected)


def test_wrong_num_classes_names_layer_and_shapes(alexnet_caffemodel, tmp_path):
    path, _ = alexnet_caffemodel
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"score_fr.*\(5, 4096, 1, 1\).*\(4, 4096, 1, 1\)"):
        convert_caffemodel(path, tmp_path / "out.pt", model_name="fcn-alexnet", num_classes=4)
    assert not (tmp_path / "out.pt").exists()


def test_legacy_v1_layers_and_missing_upscore(tmp_path):
    source = TinyFCN()
    net = proto.NetParameter(name="legacy")
    net.layers.add(name="data", type=5, top=["data"])  # V1 DATA, no blobs
    for name in ("conv1", "score_fr"):  # V1 CONVOLUTION = 4; no upscore layer at all
        conv = getattr(source, name)
        layer = net.layers.add(name=name, type=proto.V1_CONVOLUTION)
        weight = layer.blobs.add(num=conv.out_channels, channels=conv.in_channels, height=1, width=1)
        weight.height, weight.width = conv.kernel_size
        weight.data.extend(conv.weight.detach().numpy().ravel().tolist())
        bias = layer.blobs.add(num=1, channels=1, height=1, width=conv.out_channels)  # legacy bias shape
        bias.double_data.extend(conv.bias.detach().double().numpy().tolist())
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(net.SerializeToString())

    blobs = read_caffemodel(path)
    assert list(blobs) == ["conv1", "score_fr"]
    assert blobs["conv1"][0].shape == (4, 3, 3, 3) and blobs["conv1"][1].shape == (1, 1, 1, 4)
    target = TinyFCN()
    target.load_state_dict(caffe_to_state_dict(blobs, target), strict=True)
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert torch.allclose(target.score_fr.bias, source.score_fr.bias)
    kernel = bilinear_kernel(4)
    assert torch.equal(target.upscore.weight[1, 1], kernel) and target.upscore.weight[0, 1].abs().sum() == 0


def test_missing_layer_and_wrong_blob_count():
    model = TinyFCN()
    conv1 = [model.conv1.weight.detach().numpy(), model.conv1.bias.detach().numpy()]
    with pytest.raises(ValueError, match="no weights for layer 'score_fr'"):
        caffe_to_state_dict({"conv1": conv1}, model)
    with pytest.raises(ValueError, match="'conv1': the caffemodel has 1 blobs"):
        caffe_to_state_dict({"conv1": conv1[:1]}, model)


def test_corrupt_file_names_file(tmp_path):
    path = tmp_path / "corrupt.caffemodel"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="corrupt.caffemodel"):
        read_caffemodel(path)


def test_net_without_weights_is_rejected(tmp_path):
    path = tmp_path / "deploy.caffemodel"
    net = proto.NetParameter(name="no-weights")
    net.layer.add(name="data", type="Input")
    path.write_bytes(net.SerializeToString())
    with pytest.raises(ValueError, match="deploy.caffemodel: no layer carries weights"):
        read_caffemodel(path)


def test_missing_file_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.caffemodel"):
        convert_caffemodel(tmp_path / "absent.caffemodel", tmp_path / "out.pt", model_name="fcn32s")

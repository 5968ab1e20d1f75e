"""Pad skipping (fcnseg/inference/pad_skip.py) against the plain reference computation it replaces."""

import pytest
import torch
from torch import nn

from fcnseg.inference import bf16_supported, inference_model
from fcnseg.inference.pad_skip import CACHED_SIZES, PadSkippingFCN, pad_skipping, plan_axis
from fcnseg.models import FCN8s, FCN8sAtOnce, FCN16s, FCN32s


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """He-initialized weights and clearly non-zero biases (so the pad's constants are not all zero), score
    layers included (the reference zero-initializes them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if type(module) is nn.Conv2d:
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.5)
    return model.eval()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def fcn8s():
    return randomized(FCN8s(num_classes=5))


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (64, 64), (101, 77)])
def test_pad_skipping_gives_the_plain_features_and_outputs(fcn8s, size):
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_features, expected = fcn8s.features(x), fcn8s(x)
    skipping = pad_skipping(fcn8s)
    assert isinstance(skipping, PadSkippingFCN) and skipping.model is fcn8s
    with torch.no_grad():
        features, out = skipping.skipper.features(x), skipping(x)
    for got, want in zip(features, expected_features):
        assert got.shape == want.shape
        assert relative_error(got, want) < 1e-5
    assert relative_error(out, expected) < 1e-5
    assert plan_axis(size[0]) and plan_axis(size[1])  # some stages really were skipped


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8sAtOnce])
def test_pad_skipping_other_reference_models(cls):
    model = randomized(cls(num_classes=3), seed=2)
    x = torch.randn(2, 3, 45, 61, generator=torch.Generator().manual_seed(3))  # batch of 2
    with torch.no_grad():
        expected = model(x)
        got = pad_skipping(model)(x)
    assert relative_error(got, expected) < 1e-5


def test_pad_skipping_four_channel_input():
    model = randomized(FCN32s(num_classes=4, in_channels=4), seed=4)  # NYUDv2 RGB-D early fusion
    x = torch.randn(1, 4, 40, 50, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x)
        assert relative_error(pad_skipping(model)(x), expected) < 1e-5


def test_compact_layout_and_training_mode_keep_the_plain_path(fcn8s, monkeypatch):
    assert pad_skipping(FCN8s(num_classes=3, layout="compact")) is None
    skipping = pad_skipping(fcn8s)
    monkeypatch.setattr(skipping.skipper, "features", lambda x: pytest.fail("pad skipping used in training"))
    skipping.train()
    try:
        skipping(torch.randn(1, 3, 20, 20))
    finally:
        skipping.eval()


def test_background_cache_is_bounded(fcn8s):
    skipping = pad_skipping(fcn8s)
    with torch.no_grad():
        for side in range(8, 8 + CACHED_SIZES + 2):
            skipping(torch.randn(1, 3, side, side))
    assert len(skipping.skipper.backgrounds) == CACHED_SIZES


@pytest.mark.parametrize("faster", [True, False])
def test_inference_model_skips_the_pad_of_reference_vgg_only_when_faster(fcn8s, fake_timer, faster):
    example = torch.randn(1, 3, 48, 64)
    fast = inference_model(fcn8s, example, timer=fake_timer(slower=() if faster else ("pad_skip",)))
    assert ("pad_skip" in fast.steps) == faster
    assert isinstance(fast.model, PadSkippingFCN) == faster
    decision = fast.decisions[-1]
    assert (decision.step, decision.kept, decision.reason) == ("pad_skip", faster, "faster" if faster else "slower")
    x = torch.randn(1, 3, 33, 70)
    with torch.no_grad():
        expected = fcn8s(x)
    assert relative_error(fast(x), expected) < 1e-4
    if faster:
        compact = inference_model(randomized(FCN8s(num_classes=5, layout="compact")), example, timed=False)
        assert "pad_skip" not in compact.steps and "pad_skip" not in [d.step for d in compact.decisions]


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no oneDNN bf16 kernels on this CPU")
def test_bf16_inference_with_pad_skipping_stays_close(fcn8s):
    example = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = fcn8s(example)
    fast = inference_model(fcn8s, example, bf16=True, timed=False)
    assert {"pad_skip", "bf16"} <= set(fast.steps)
    got = fast(example)
    assert got.dtype == torch.float32
    assert relative_error(got, expected) < 5e-2
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.95


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no oneDNN bf16 kernels on this CPU")
def test_bf16_is_dropped_when_it_is_not_faster(fcn8s, fake_timer):
    fast = inference_model(fcn8s, torch.randn(1, 3, 48, 64), bf16=True, timer=fake_timer(slower=("bf16",)))
    assert fast.autocast_dtype is None and "bf16" not in fast.steps
    assert str(fast.decisions[-1]).startswith("bf16: dropped, slower (")

"""fcnseg.inference.inference_model: every speed-up gives the plain path's output (eval, inference_mode)."""

import pytest
import torch

from fcnseg.checkpoint import default_checkpoint_path, model_from_checkpoint
from fcnseg.inference import fold_batch_norms, inference_model
from fcnseg.models import FCNAlexNet


@pytest.fixture(scope="module")
def shipped_model():
    model, _ = model_from_checkpoint(default_checkpoint_path())
    return model


def plain(model, x):
    with torch.inference_mode():
        return model.eval()(x)


def test_batch_norm_folding_matches_and_leaves_the_original_untouched(shipped_model):
    before = {k: v.clone() for k, v in shipped_model.state_dict().items()}
    folded, count = fold_batch_norms(shipped_model)
    assert count > 40  # stem, head, and two or three per MBConv block
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 45, 70)
    torch.testing.assert_close(plain(folded, x), plain(shipped_model, x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in shipped_model.state_dict().items())


def test_inference_model_matches_plain_path_on_other_sizes(shipped_model):
    fast = inference_model(shipped_model, torch.randn(1, 3, 64, 96))
    assert fast.steps == ["fold_bn", "channels_last", "fuse_lite", "channelwise_upsample"]
    for size in ((1, 3, 64, 96), (2, 3, 37, 81)):
        x = torch.randn(size)
        torch.testing.assert_close(fast(x), plain(shipped_model, x), rtol=1e-4, atol=1e-4)


def test_inference_model_on_a_model_without_batch_norm():
    torch.manual_seed(0)
    model = FCNAlexNet(num_classes=3)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and not isinstance(module, torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(module.weight, std=0.02)
    x = torch.randn(1, 3, 40, 52)
    fast = inference_model(model, x)
    assert fast.steps == ["channels_last", "unfold_fc6", "fuse_relu", "channelwise_upsample"]
    torch.testing.assert_close(fast(x), plain(model, x), rtol=1e-4, atol=1e-4)


def test_compile_is_kept_when_it_works_and_matches():
    # A regression test: `self.compiled or self.model` once asked the compiled module for len() and so always
    # fell back to eager. A small conv net compiles in seconds (inductor needs a C++ compiler, as CI has).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 24, 32)
    fast = inference_model(model, x, compile=True)
    assert fast.steps == ["channels_last", "compile"] and fast.compiled is not None
    torch.testing.assert_close(fast(x), plain(model, x), rtol=1e-4, atol=1e-4)


def test_compile_failure_falls_back_to_eager(shipped_model, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    x = torch.randn(1, 3, 32, 32)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        fast = inference_model(shipped_model, x, compile=True)
    assert "compile" not in fast.steps and fast.compiled is None
    torch.testing.assert_close(fast(x), plain(shipped_model, x), rtol=1e-4, atol=1e-4)


# --- compact layout (no 100-pixel pad): same state dict, output at input size, cells centred on their pixels ---

from torch import nn  # noqa: E402

from fcnseg.models import FCN8s, FCN16s, FCN32s  # noqa: E402

COMPACT_SCORE_LAYERS = {"score_pool3": ("pool3", 8), "score_pool4": ("pool4", 16), "score_fr": ("fc7", 32)}


def compact(cls, num_classes=2):
    torch.manual_seed(0)
    return cls(num_classes=num_classes, layout="compact").eval()


@pytest.mark.parametrize("cls", [FCN32s, FCN16s, FCN8s])
def test_compact_layout_loads_the_reference_state_dict_and_keeps_the_input_size(cls):
    model = compact(cls)
    model.load_state_dict(cls(num_classes=2).state_dict(), strict=True)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 2, 37, 53)


def test_compact_layout_rejects_unknown_layouts():
    with pytest.raises(ValueError, match="layout"):
        FCN8s(num_classes=2, layout="tight")


def measured_centre(model: nn.Module, last: str, side: int, cell: int) -> float:
    """Row centre of the receptive field of ``last``'s cell (cell, cell), from the gradient support of a
    one-channel linear copy of the geometry (ones for weights, average for max pooling)."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and not isinstance(module, nn.ConvTranspose2d):
            conv = nn.Conv2d(1, 1, module.kernel_size, stride=module.stride, padding=module.padding, bias=False)
            nn.init.ones_(conv.weight)
            layers.append(conv)
        elif isinstance(module, nn.MaxPool2d):
            layers.append(nn.AvgPool2d(module.kernel_size, module.stride, ceil_mode=module.ceil_mode))
        if name == last:
            break
    x = torch.zeros(1, 1, side, side, dtype=torch.float64, requires_grad=True)
    out = nn.Sequential(*layers).double()(x)
    (grad,) = torch.autograd.grad(out[0, 0, cell, cell], x)
    rows = grad[0, 0].abs().sum(1).nonzero()
    assert rows.min() > 0 and rows.max() < side - 1  # the whole field lies inside the input
    return (rows.min().item() + rows.max().item()) / 2


def impulse_centroid(model: nn.Module, score_layer: str, height: int, width: int, cell: int) -> float:
    """Output row centroid when ``score_layer`` is an impulse at (cell, cell) and every other score map is zero."""
    def hook(module, inputs, output, inject=False):
        out = torch.zeros_like(output)
        if inject:
            out[:, :, cell, cell] = 1.0
        return out

    handles = [getattr(model, name).register_forward_hook(
        lambda m, i, o, inject=(name == score_layer): hook(m, i, o, inject)) for name in COMPACT_SCORE_LAYERS
        if hasattr(model, name)]
    with torch.no_grad():
        out = model(torch.zeros(1, 3, height, width))[0, 0]  # (H, W)
    for handle in handles:
        handle.remove()
    rows = torch.arange(height, dtype=torch.float64)
    weights = out.double().sum(1)
    return (weights * rows).sum().item() / weights.sum().item()


@pytest.mark.parametrize("score_layer", ["score_pool3", "score_pool4", "score_fr"])
def test_compact_fcn8s_scores_each_pixel_with_the_cell_centred_on_it(score_layer):
    model = compact(FCN8s, num_classes=1)
    feature, stride = COMPACT_SCORE_LAYERS[score_layer]
    cell = 9 if stride == 32 else 4
    side = 640 if stride == 32 else 128
    centre = measured_centre(model, feature, side, cell)
    assert centre == stride * cell + (stride - 1) / 2
    # The impulse lands there too (input odd-sized, padded inside; cell far enough from the border).
    height = int(centre + 1.5 * stride + 3) | 1
    assert impulse_centroid(model, score_layer, height, height + 6, cell) == pytest.approx(centre, abs=1e-6)


def test_speed_check_compares_alternating_timings(monkeypatch):
    import fcnseg.inference as fast_module

    class Probe(torch.nn.Module):
        def forward(self, x):
            return x

    fp32 = fast_module.InferenceModule(Probe(), channels_last=False)
    bf16 = fast_module.InferenceModule(Probe(), channels_last=False, autocast_dtype=torch.bfloat16)
    calls = []

    def seconds(module, x):
        calls.append(module)
        return 1.0 if module.autocast_dtype else 2.0  # bf16 calls take 1 s, float32 calls 2 s

    monkeypatch.setattr(fast_module, "_seconds", seconds)
    assert fast_module._is_faster(bf16, fp32, torch.zeros(1))
    assert calls[:4] == [fp32, bf16, fp32, bf16]  # alternating
    assert not fast_module._is_faster(fp32, bf16, torch.zeros(1))


def test_a_missing_private_onednn_op_skips_the_fusions_with_a_warning(monkeypatch):
    """Simulate a torch build without ``torch.ops.mkldnn._convolution_pointwise``: inference_model warns in one
    line, keeps the other rewrites, and the model still gives the plain outputs."""
    from fcnseg.inference import onednn
    from fcnseg.models import build_model

    onednn.onednn_unavailable.cache_clear()
    monkeypatch.setattr(onednn, "REQUIRED_OPS", ("_convolution_pointwise_missing_in_this_build",))
    try:
        torch.manual_seed(0)
        model = build_model("fcn8s-lite0", num_classes=3).eval()
        example = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            expected = model(example)
        with pytest.warns(UserWarning, match="skipping fuse_lite, fuse_relu: torch.ops.mkldnn fused convolutions unusable"):
            fast = inference_model(model, example)
        assert "fuse_lite" not in fast.steps and any(step.startswith("fuse_lite (skipped") for step in fast.steps)
        assert "fold_bn" in fast.steps and "channelwise_upsample" in fast.steps
        assert not any(isinstance(m, onednn.FusedEfficientNetLite) for m in fast.modules())
        torch.testing.assert_close(fast(example), expected, rtol=1e-4, atol=1e-4)
    finally:
        onednn.onednn_unavailable.cache_clear()


def test_inference_model_leaves_the_model_as_it_was():
    """Rewrites replace modules in a copy or wrap it: the caller's model keeps its modules and attributes."""
    from fcnseg.models import build_model

    for name in ("fcn8s", "fcn8s-lite0"):
        model = build_model(name, num_classes=2).eval()
        modules = [(n, type(m)) for n, m in model.named_modules()]
        attributes = {n: set(vars(m)) for n, m in model.named_modules()}
        inference_model(model, torch.randn(1, 3, 32, 32))
        assert [(n, type(m)) for n, m in model.named_modules()] == modules
        assert {n: set(vars(m)) for n, m in model.named_modules()} == attributes


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
def test_the_onednn_probe_is_not_fooled_by_the_callers_autocast():
    """The probe compares fused and plain float32 convolutions; a first call under bf16 autocast must not make it
    disable the fusions for the whole process."""
    from fcnseg.inference import onednn

    onednn.onednn_unavailable.cache_clear()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert onednn.onednn_unavailable() is None
    finally:
        onednn.onednn_unavailable.cache_clear()

"""fcnseg.inference.inference_model: every speed-up gives the plain path's output (eval, inference_mode), and
each optional one is kept only when it times faster (a fake timer decides here; tests/inference/conftest.py)."""

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


def alexnet():
    torch.manual_seed(0)
    model = FCNAlexNet(num_classes=3)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and not isinstance(module, torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(module.weight, std=0.02)
    return model.eval()


SHIPPED_STEPS = ["fold_bn", "channels_last", "fuse_lite", "channelwise_upsample"]
ALEXNET_STEPS = ["channels_last", "unfold_fc6", "fuse_relu", "channelwise_upsample"]


def test_inference_model_matches_plain_path_on_other_sizes(shipped_model):
    fast = inference_model(shipped_model, torch.randn(1, 3, 64, 96), timed=False)
    assert fast.steps == SHIPPED_STEPS
    batch_norms = sum(isinstance(module, torch.nn.BatchNorm2d) for module in shipped_model.modules())
    assert [str(decision) for decision in fast.decisions] == [
        f"fold_bn: kept ({batch_norms} conv + batch norm pairs; always less work, not timed)",
        "channels_last: kept (not timed)",
        "fuse_lite: kept (not timed)", "channelwise_upsample: kept (not timed)"]
    for size in ((1, 3, 64, 96), (2, 3, 37, 81)):
        x = torch.randn(size)
        torch.testing.assert_close(fast(x), plain(shipped_model, x), rtol=1e-4, atol=1e-4)


def test_inference_model_on_a_model_without_batch_norm():
    model = alexnet()
    x = torch.randn(1, 3, 40, 52)
    fast = inference_model(model, x, timed=False)
    assert fast.steps == ALEXNET_STEPS
    torch.testing.assert_close(fast(x), plain(model, x), rtol=1e-4, atol=1e-4)


# --- each optional rewrite is timed against the module without it ---

REWRITE_CASES = [("shipped", step) for step in SHIPPED_STEPS[1:]] + [("alexnet", step) for step in ALEXNET_STEPS]


@pytest.mark.parametrize("model_name, step", REWRITE_CASES)
@pytest.mark.parametrize("faster", [True, False])
def test_a_rewrite_is_kept_only_when_it_times_faster(shipped_model, fake_timer, model_name, step, faster):
    model, all_steps, x = {"shipped": (shipped_model, SHIPPED_STEPS, torch.randn(1, 3, 64, 96)),
                           "alexnet": (alexnet(), ALEXNET_STEPS, torch.randn(1, 3, 40, 52))}[model_name]
    fast = inference_model(model, x, timer=fake_timer(slower=() if faster else (step,)))
    decision = next(decision for decision in fast.decisions if decision.step == step)
    if faster:
        assert fast.steps == all_steps
        assert decision.kept and decision.reason == "faster" and decision.ms < decision.without_ms
        assert str(decision) == f"{step}: kept ({decision.ms:.1f} ms vs {decision.without_ms:.1f} ms without)"
    else:
        assert fast.steps == [name for name in all_steps if name != step]  # the others still kept
        assert not decision.kept and decision.reason == "slower"
        assert decision.ms == pytest.approx(2 * decision.without_ms)
        assert str(decision).startswith(f"{step}: dropped, slower (")
    assert [decision.step for decision in fast.decisions] == all_steps  # every step tried is reported
    y = torch.randn(2, 3, 37, 81)  # another size, checked against the eager model
    torch.testing.assert_close(fast(y), plain(model, y), rtol=1e-4, atol=1e-4)


def test_a_rewrite_within_the_margin_keeps_the_form_without_it(shipped_model):
    def timer(module, example):  # channels_last 2% faster, everything else the same
        return 0.98e-2 if module.channels_last else 1e-2

    fast = inference_model(shipped_model, torch.randn(1, 3, 64, 96), timer=timer)
    assert not fast.channels_last and "channels_last" not in fast.steps
    decision = fast.decisions[1]
    assert (decision.step, decision.kept, decision.reason) == ("channels_last", False, "not faster by 3%")
    assert (decision.ms, decision.without_ms) == (pytest.approx(9.8), pytest.approx(10.0))
    assert str(decision) == "channels_last: dropped, not faster by 3% (9.8 ms vs 10.0 ms without)"
    assert inference_model(shipped_model, torch.randn(1, 3, 64, 96), timer=timer, margin=0.01).channels_last


def test_untimed_inference_model_never_calls_the_timer(shipped_model):
    def timer(module, example):
        raise AssertionError("timed")

    assert inference_model(shipped_model, torch.randn(1, 3, 32, 32), timed=False, timer=timer).steps == SHIPPED_STEPS


def test_the_default_timer_times_real_calls(shipped_model):
    """Wall-clock timing on a small example: each rewrite reports two positive medians, and whatever is kept
    gives the plain outputs."""
    x = torch.randn(1, 3, 32, 48)
    fast = inference_model(shipped_model, x)
    timed = [decision for decision in fast.decisions if decision.step != "fold_bn"]
    assert [decision.step for decision in timed] == SHIPPED_STEPS[1:]
    assert all(decision.ms > 0 and decision.without_ms > 0 for decision in timed)
    assert set(fast.steps) == {"fold_bn"} | {decision.step for decision in timed if decision.kept}
    torch.testing.assert_close(fast(x), plain(shipped_model, x), rtol=1e-4, atol=1e-4)


def test_compile_is_kept_when_it_works_and_matches():
    # A regression test: `self.compiled or self.model` once asked the compiled module for len() and so always
    # fell back to eager. A small conv net compiles in seconds (inductor needs a C++ compiler, as CI has).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 24, 32)
    fast = inference_model(model, x, compile=True, timed=False)
    assert fast.steps == ["channels_last", "compile"] and fast.compiled is not None
    torch.testing.assert_close(fast(x), plain(model, x), rtol=1e-4, atol=1e-4)


def test_compile_is_dropped_when_it_is_slower(fake_timer):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 24, 32)
    fast = inference_model(model, x, compile=True, timer=fake_timer(slower=("compile",)))
    assert fast.steps == ["channels_last"] and fast.compiled is None
    assert str(fast.decisions[-1]).startswith("compile: dropped, slower (")
    torch.testing.assert_close(fast(x), plain(model, x), rtol=1e-4, atol=1e-4)


def test_compile_failure_falls_back_to_eager(shipped_model, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    x = torch.randn(1, 3, 32, 32)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        fast = inference_model(shipped_model, x, compile=True, timed=False)
    assert "compile" not in fast.steps and fast.compiled is None
    assert str(fast.decisions[-1]) == "compile: dropped, failed: RuntimeError"
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
            fast = inference_model(model, example, timed=False)
        assert fast.steps == ["fold_bn", "channels_last", "channelwise_upsample"]
        skipped = [str(decision) for decision in fast.decisions if not decision.tried]
        assert len(skipped) == 2 and skipped[0].startswith("fuse_lite: skipped (torch.ops.mkldnn fused")
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
        inference_model(model, torch.randn(1, 3, 32, 32), timed=False)
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


def test_bf16_is_reported_when_inaccurate_or_unsupported(shipped_model, monkeypatch):
    import fcnseg.inference as fast_module

    x = torch.randn(1, 3, 32, 48)
    if fast_module.bf16_supported(x.device):
        fast = inference_model(shipped_model, x, bf16=True, bf16_tolerance=0.0, timed=False)
        assert fast.autocast_dtype is None and "bf16" not in fast.steps
        assert str(fast.decisions[-1]).startswith("bf16: dropped, inaccurate: relative error ")
    monkeypatch.setattr(fast_module, "bf16_supported", lambda device: False)
    fast = inference_model(shipped_model, x, bf16=True, timed=False)
    assert fast.autocast_dtype is None and str(fast.decisions[-1]) == "bf16: skipped (no fast bf16 kernels on cpu)"

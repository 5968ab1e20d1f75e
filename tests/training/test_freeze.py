"""``freeze_backbone_stride``: the frozen layers are the ones that compute the backbone's stride-N features (checked
on the features' autograd state), a prefix of the backbone, untouched by training (weights and batch-norm
statistics bit for bit), run in their fused inference form with the plain form's outputs and gradients, and a model
without a separate backbone gets a clear error."""

import copy


import pytest
import torch

from fcnseg.checkpoint import load_checkpoint
from fcnseg.models import build_model
from fcnseg.training.config import make_config
from fcnseg.training.frozen_layers import FrozenMBConv
from fcnseg.training.loop import set_training_modes, train
from fcnseg.training.setup import build_training_model, freeze_backbone_layers, make_optimizer


def backbone_features(model, x):
    """``{stride: features}`` of the model's backbone for ``x``: 8, 16, 32, and 4 where the backbone has it."""
    if hasattr(model.backbone, "forward_stride4"):
        return dict(zip((4, 8, 16, 32), model.backbone.forward_stride4(x)))
    return dict(zip((8, 16, 32), model.backbone(x)))


@pytest.mark.parametrize("model_name, stride", [
    ("fcn4s-lite1", 4), ("fcn4s-lite1", 8), ("fcn4s-lite1", 16), ("fcn8s-resnet50", 8), ("fcn8s-vgg16-compact", 16),
])
def test_frozen_layers_compute_the_stride_features_and_nothing_after(model_name, stride):
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=3)
    frozen = freeze_backbone_layers(model, stride, model_name=model_name)
    features = backbone_features(model, torch.randn(1, 3, 64, 64))
    assert features[stride].shape[-1] == 64 // stride
    assert not features[stride].requires_grad  # computed by frozen layers only ...
    assert features[2 * stride].requires_grad  # ... and the next stage is trained
    # The frozen parameters are the backbone's first ones (registration order is execution order here).
    flags = [parameter.requires_grad for parameter in model.backbone.parameters()]
    first_trained = flags.index(True)
    assert not any(flags[:first_trained]) and all(flags[first_trained:])
    assert first_trained == sum(parameter.numel() > 0 for layer in frozen for parameter in layer.parameters())
    assert all(parameter.requires_grad for name, parameter in model.named_parameters()
               if not name.startswith("backbone.") and not name.startswith("upscore"))


def test_stride_2_freezes_the_lite_stem_and_first_stage_only():
    model = build_model("fcn8s-lite0", num_classes=3)
    net = model.backbone.net
    frozen = freeze_backbone_layers(model, 2, model_name="fcn8s-lite0")
    assert frozen == [net._conv_stem, net._bn0, net._blocks[0]]  # stage 1 (stride 1) ends at block 0
    assert net._blocks[0]._project_conv.weight.shape[0] == 16 and net._blocks[1]._depthwise_conv.stride == (2, 2)


def freeze_config(root, out, **changes):
    values = {
        "model": "fcn8s-lite0", "dataset": "folder", "root": str(root), "out": str(out), "iters": 2, "batch_size": 2,
        "crop_size": 32, "scale_range": None, "lr": 1e-2, "val_every": 2, "val_max_images": 1, "workers": 0, "seed": 0,
        "freeze_backbone_stride": 4,
    }
    return make_config({**values, **changes})


def test_training_leaves_frozen_layers_bit_for_bit_and_trains_the_rest(shapes, tmp_path):
    config = freeze_config(shapes, tmp_path / "run")
    torch.manual_seed(config.seed)  # as train() does before building the model
    initial, _ = build_training_model(config)
    initial_state = {key: value.clone() for key, value in initial.state_dict().items()}
    frozen_names = {f"backbone.net.{prefix}" for prefix in ("_conv_stem.", "_bn0.", "_blocks.0.", "_blocks.1.",
                                                            "_blocks.2.")}  # Lite0: stage 2 ends at block 2
    train(config, progress=False)
    trained = load_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    frozen_keys = [key for key in trained if key.startswith(tuple(frozen_names))]
    assert any(key.endswith("running_mean") for key in frozen_keys)
    for key in frozen_keys:  # weights and batch-norm statistics: the ImageNet ones, untouched
        assert torch.equal(trained[key], initial_state[key]), key
    assert not torch.equal(trained["backbone.net._blocks.3._bn0.running_mean"],
                           initial_state["backbone.net._blocks.3._bn0.running_mean"])
    assert not torch.equal(trained["backbone.net._blocks.3._expand_conv.weight"],
                           initial_state["backbone.net._blocks.3._expand_conv.weight"])


def test_optimizer_holds_only_the_trained_parameters(shapes, tmp_path):
    config = freeze_config(shapes, tmp_path / "run")
    model, _ = build_training_model(config)
    optimizer = make_optimizer(model, config)
    held = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    trained = {id(parameter) for parameter in model.parameters() if parameter.requires_grad}
    assert held == trained and len(trained) < len(list(model.parameters()))


def test_bad_freeze_settings_are_clear_errors(shapes, tmp_path):
    with pytest.raises(ValueError, match="freeze_backbone_stride must be 2, 4, 8, 16 or null, got 3"):
        train(freeze_config(shapes, tmp_path / "a", freeze_backbone_stride=3), progress=False)
    with pytest.raises(ValueError, match="fcn8s has no separate backbone to freeze"):
        freeze_backbone_layers(torch.nn.Conv2d(3, 3, 1), 4, model_name="fcn8s")  # the VGG reference nets
    with pytest.raises(ValueError, match="EfficientNet-Lite has layers to stride \\[2, 4, 8, 16\\], not 32"):
        build_model("fcn8s-lite0", num_classes=3).backbone_layers_to_stride(32)


def with_random_batch_norms(model, seed):
    """``model`` with random batch-norm statistics and affine parameters, so that folding them is not trivial, and
    random score layers (zero-initialized in FCNs), so that the output and the backbone's gradients are not zero."""
    generator = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if name.startswith("score") and isinstance(module, torch.nn.Conv2d):
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=generator) * 0.1)
        if isinstance(module, torch.nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.1)
    return model


def outputs_and_gradients(model, x, seed):
    torch.manual_seed(seed)  # the same stochastic-depth draws for both models
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_frozen_blocks_give_the_plain_outputs_and_gradients(shapes, tmp_path, channels_last):
    config = freeze_config(shapes, tmp_path / "run", freeze_backbone_stride=8)
    torch.manual_seed(0)
    plain = with_random_batch_norms(build_model("fcn4s-lite1", num_classes=3), seed=1)
    fused = copy.deepcopy(plain)
    freeze_backbone_layers(plain, 8, model_name="fcn4s-lite1", fused=False)
    frozen = freeze_backbone_layers(fused, 8, model_name="fcn4s-lite1")
    assert sum(isinstance(layer, FrozenMBConv) for layer in frozen) == 7  # Lite1's blocks 0-6: stages 1-3
    assert all(layer in list(fused.modules()) for layer in frozen)
    assert list(fused.state_dict()) == list(plain.state_dict())  # checkpoints unchanged
    for model in (plain, fused):
        set_training_modes(model, config)  # frozen batch norm in eval mode, stochastic depth on
        if channels_last:
            model.to(memory_format=torch.channels_last)
    assert any(layer.training and layer.has_skip and layer.drop_path.rate > 0
               for layer in frozen if isinstance(layer, FrozenMBConv))
    x = torch.randn(2, 3, 64, 96)
    for seed in (0, 1):  # training mode: the frozen layers' output, with stochastic depth drawn alike
        torch.manual_seed(seed)
        plain_frozen_features = backbone_features(plain, x)[8]
        torch.manual_seed(seed)
        torch.testing.assert_close(backbone_features(fused, x)[8], plain_frozen_features, rtol=1e-5, atol=1e-6)
    # Eval mode for the whole net (batch norm on batch statistics of a few cells makes the trained layers'
    # gradients ill-conditioned: a 1e-6 change of the input moves some of them by 100%): the outputs and
    # the gradients of the trained parameters are the plain ones.
    plain.eval()
    fused.eval()
    plain_out, plain_grads = outputs_and_gradients(plain, x, 0)
    fused_out, fused_grads = outputs_and_gradients(fused, x, 0)
    assert relative_error(fused_out, plain_out) < 1e-5 and plain_out.abs().mean() > 1e-2
    assert plain_grads.keys() == fused_grads.keys()
    assert not any(name.startswith("backbone.net._blocks.6.") for name in plain_grads)
    assert any(name.startswith("backbone.net._blocks.7.") for name in plain_grads)
    for name, grad in plain_grads.items():
        assert relative_error(fused_grads[name], grad) < 1e-4, name


def relative_error(actual, expected):
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-12)).item()


def test_fused_frozen_blocks_follow_loaded_weights():
    torch.manual_seed(0)
    plain = with_random_batch_norms(build_model("fcn4s-lite1", num_classes=3), seed=1).eval()
    fused = copy.deepcopy(plain)
    freeze_backbone_layers(plain, 4, model_name="fcn4s-lite1", fused=False)
    freeze_backbone_layers(fused, 4, model_name="fcn4s-lite1")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = fused(x)  # builds the fused twins
        other = with_random_batch_norms(build_model("fcn4s-lite1", num_classes=3), seed=2).state_dict()
        plain.load_state_dict(other)
        fused.load_state_dict(other)  # e.g. resuming: the twins must not keep the old weights
        expected = plain(x)
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, expected, atol=1e-3)

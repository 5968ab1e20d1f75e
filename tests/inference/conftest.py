"""A fake timer for ``inference_model``'s timing: deterministic, and it never runs the module it times."""

import pytest

from fcnseg.inference.channelwise_upsample import ChannelwiseUpsample
from fcnseg.inference.onednn import ConvReLU2d, FusedEfficientNetLite
from fcnseg.inference.pad_skip import PadSkippingFCN
from fcnseg.inference.unfold_fc import UnfoldConv2d


def holds(cls):
    return lambda module: any(isinstance(child, cls) for child in module.modules())


# Whether an InferenceModule has each step, read from its structure alone.
HAS_STEP = {
    "channels_last": lambda module: module.channels_last,
    "fuse_lite": holds(FusedEfficientNetLite),
    "unfold_fc6": holds(UnfoldConv2d),
    "fuse_relu": holds(ConvReLU2d),
    "channelwise_upsample": holds(ChannelwiseUpsample),
    "pad_skip": holds(PadSkippingFCN),
    "compile": lambda module: module.compiled is not None,
    "bf16": lambda module: module.autocast_dtype is not None,
}
BASE_MS = 10.0


def make_fake_timer(*, slower=(), calls=None):
    """``timer(module, example) -> seconds``: 10 ms, times 0.8 for each step the module has, except the steps in
    ``slower``, which double it. Appends each timed module to ``calls`` when given."""
    unknown = set(slower) - set(HAS_STEP)
    if unknown:
        raise ValueError(f"unknown steps {unknown}")

    def timer(module, example):
        if calls is not None:
            calls.append(module)
        ms = BASE_MS
        for step, has_step in HAS_STEP.items():
            if has_step(module):
                ms *= 2.0 if step in slower else 0.8
        return ms / 1e3

    return timer


@pytest.fixture
def fake_timer():
    return make_fake_timer

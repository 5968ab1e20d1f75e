"""Our models against the popular torchfcn port of the reference: same state-dict keys, same outputs.

torchfcn's state dicts are what its published conversions of the reference Caffe models contain,
so a strict load plus identical outputs on random weights shows those conversions load and run
unchanged. torchfcn is installed with ``pip install --no-deps torchfcn==1.9.7`` (README); its package
``__init__`` pulls unrelated dependencies, so its ``models`` subpackage is imported on its own.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from fcnseg.models import FCN8s, FCN8sAtOnce, FCN16s, FCN32s


def import_torchfcn_models():
    spec = importlib.util.find_spec("torchfcn")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("torchfcn is not installed (pip install --no-deps torchfcn==1.9.7)")
    models_dir = Path(next(iter(spec.submodule_search_locations))) / "models"
    sys.modules.setdefault("fcn", types.ModuleType("fcn"))  # imported only to download weights
    package_spec = importlib.util.spec_from_file_location(
        "torchfcn_models", models_dir / "__init__.py", submodule_search_locations=[str(models_dir)]
    )
    package = importlib.util.module_from_spec(package_spec)
    sys.modules["torchfcn_models"] = package
    package_spec.loader.exec_module(package)
    return package


@pytest.mark.parametrize(
    "ours_class, theirs_name",
    [(FCN32s, "FCN32s"), (FCN16s, "FCN16s"), (FCN8s, "FCN8s"), (FCN8sAtOnce, "FCN8sAtOnce")],
)
def test_torchfcn_state_dict_loads_strictly_and_gives_identical_outputs(ours_class, theirs_name):
    torchfcn_models = import_torchfcn_models()
    torch.manual_seed(0)
    theirs = getattr(torchfcn_models, theirs_name)(n_class=4).eval()
    with torch.no_grad():  # torchfcn zero-initializes every conv: give it real weights
        for name, param in theirs.named_parameters():
            if "upscore" not in name:
                param.normal_(0, 0.02 if name.endswith("weight") else 0.1)
    ours = ours_class(num_classes=4).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 67, 93) * 50
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert expected.abs().max() > 0
    assert torch.equal(got, expected)

"""Training pieces against independent computations: schedules, the loss, parameter groups, config."""

import math

import pytest
import torch
import torch.nn.functional as F

from fcnseg.training.config import load_config, make_config, parse_overrides, resolve_recipe
from fcnseg.training.loop import lr_at
from fcnseg.training.losses import segmentation_loss
from fcnseg.training.sampling import SampleCounter, SeededSamples
from fcnseg.training.setup import make_optimizer


def test_schedules_are_pure_functions_of_the_step():
    assert lr_at(0, base_lr=0.1, iters=100, schedule="fixed") == 0.1
    assert lr_at(50, base_lr=0.1, iters=100, schedule="poly") == pytest.approx(0.1 * 0.5**0.9)
    assert lr_at(50, base_lr=0.1, iters=100, schedule="cosine") == pytest.approx(0.05)
    assert lr_at(100, base_lr=0.1, iters=100, schedule="cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(1, base_lr=0.1, iters=100, schedule="poly", warmup_iters=4) == pytest.approx(0.05)


def test_sum_loss_is_the_papers_unnormalized_pixel_sum():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0, :3] = 255
    # Brute force: -log softmax at the true class, pixel by pixel, ignored pixels skipped.
    expected, count = 0.0, 0
    for n in range(2):
        for i in range(4):
            for j in range(5):
                t = int(target[n, i, j])
                if t != 255:
                    expected -= math.log(torch.softmax(logits[n, :, i, j], 0)[t].item())
                    count += 1
    assert segmentation_loss(logits, target, reduction="sum").item() == pytest.approx(expected, rel=1e-5)
    assert segmentation_loss(logits, target, reduction="mean").item() == pytest.approx(expected / count, rel=1e-5)


def test_loss_sampling_drops_whole_final_layer_cells():
    logits = torch.zeros(1, 2, 64, 64)
    target = torch.zeros(1, 64, 64, dtype=torch.long)
    torch.manual_seed(3)
    total = segmentation_loss(logits, target, reduction="sum", loss_sample=0.5, cell_size=32).item()
    per_pixel = F.cross_entropy(logits, target, reduction="none")[0, 0, 0].item()
    kept_cells = total / (per_pixel * 32 * 32)
    assert kept_cells == pytest.approx(round(kept_cells)) and 0 <= round(kept_cells) <= 4


def test_paper_recipe_doubles_bias_lr_without_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    config = resolve_recipe(make_config({"recipe": "paper", "model": "fcn32s"}))
    assert (config.lr, config.momentum, config.batch_size, config.loss) == (1e-10, 0.99, 1, "sum")
    optimizer = make_optimizer(model, config)
    weights, biases = optimizer.param_groups
    assert biases["lr_mult"] == 2.0 and biases["weight_decay"] == 0.0 and weights["weight_decay"] == 5e-4
    assert len(biases["params"]) == 2 and all(p.ndim == 1 for p in biases["params"])


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ValueError, match="unknown config keys: lrr"):
        make_config({"lrr": 0.1})
    with pytest.raises(ValueError, match="'iters' expects"):
        make_config({"iters": "many"})
    path = tmp_path / "run.yaml"
    path.write_text("model: fcn16s\nlr: 0.001\nscale_range: [0.5, 1.5]\n")
    config = load_config(path, parse_overrides(["lr=0.01", "hflip=false"]))
    assert (config.model, config.lr, config.scale_range, config.hflip) == ("fcn16s", 0.01, (0.5, 1.5), False)
    assert load_config(None, parse_overrides(["lr=1e-3"])).lr == 0.001  # YAML reads 1e-3 as a string
    with pytest.raises(ValueError, match="'lr' expects"):
        make_config({"lr": "fast"})
    with pytest.raises(ValueError, match="not key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ValueError, match="needs crop_size"):
        resolve_recipe(make_config({"batch_size": 4, "crop_size": 0}))


def test_sample_order_depends_only_on_the_counter():
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, index):
            return index, torch.rand(()).item()

    wrapped = SeededSamples(Items(), seed=7)
    first_epoch = [wrapped[g][0] for g in range(5)]
    assert sorted(first_epoch) == list(range(5))
    again = SeededSamples(Items(), seed=7)
    assert [again[g] for g in (7, 3, 12)] == [wrapped[g] for g in (7, 3, 12)]
    counter = iter(SampleCounter(start=4, stride=2))
    assert [next(counter) for _ in range(3)] == [4, 6, 8]
    state = torch.get_rng_state()
    wrapped[0]
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched


@pytest.mark.parametrize("key, value", [("checkpoint_every", 0), ("checkpoint_minutes", -1.0), ("val_every", 0)])
def test_cadence_keys_must_be_positive(key, value):
    with pytest.raises(ValueError, match=key):
        resolve_recipe(make_config({key: value}))
    assert resolve_recipe(make_config({"checkpoint_every": 10, "checkpoint_minutes": None})).checkpoint_every == 10

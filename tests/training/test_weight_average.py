"""``ema_decay``: the averaged weights against the recurrence computed by hand in float64 from the weights the
optimizer held after each step; training itself unchanged; validation scores the average; exact resume."""

import csv

import pytest
import torch
from torch import nn

from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.evaluate import evaluate
from fcnseg.training import loop
from fcnseg.training.config import make_config, resolve_recipe
from fcnseg.training.data import build_datasets
from fcnseg.training.loop import train
from fcnseg.training.weight_average import decay_at, start_average, update_average


def hand_average(initial: dict, states: list[dict], *, decay: float) -> dict:
    """The moving average of ``states`` (one per optimizer step) from ``initial``, in float64, step by step."""
    average = {key: value.double() for key, value in initial.items() if value.is_floating_point()}
    for step, state in enumerate(states, start=1):
        decay_t = min(decay, (1 + step) / (10 + step))
        for key in average:
            average[key] = decay_t * average[key] + (1 - decay_t) * state[key].double()
    return average


def test_decay_warms_up_to_the_configured_value():
    assert decay_at(1, decay=0.999) == pytest.approx(2 / 11)
    assert decay_at(90, decay=0.999) == pytest.approx(0.91)
    assert decay_at(100_000, decay=0.999) == 0.999
    assert decay_at(5, decay=0.0) == 0.0
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        resolve_recipe(make_config({"ema_decay": 1.0}))
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        start_average(nn.Linear(2, 2), decay=-0.5)


def test_average_follows_the_recurrence_for_parameters_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    average = start_average(model, decay=0.9)
    assert not any(parameter.requires_grad for parameter in average.model.parameters())
    states = []
    for step in range(1, 40):
        with torch.no_grad():
            for value in model.state_dict().values():
                if value.is_floating_point():
                    value.add_(torch.randn_like(value))
            model[1].num_batches_tracked.fill_(step)
        states.append({key: value.clone() for key, value in model.state_dict().items()})
        update_average(average, model, step=step)
    expected = hand_average(initial, states, decay=0.9)
    got = average.model.state_dict()
    assert set(expected) == {key for key in got if key != "1.num_batches_tracked"}  # running stats averaged too
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), value, rtol=1e-5, atol=1e-5)
    assert int(got["1.num_batches_tracked"]) == 39  # integer buffers are copied


def copy_of(model: nn.Module) -> dict:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def ema_config(root, out, **changes):
    values = {
        "model": "fcn8s-lite0", "dataset": "folder", "root": str(root), "out": str(out), "iters": 4, "batch_size": 2,
        "crop_size": 32, "scale_range": None, "lr": 1e-2, "val_every": 4, "workers": 0, "seed": 0,
        "checkpoint_minutes": None, "ema_decay": 0.5,
    }
    return make_config({**values, **changes})


def test_training_with_an_average_saves_and_scores_it(shapes, tmp_path, monkeypatch):
    initial, seen, scored = [], [], []  # the weights averaging starts from, follows after each step, validation scores
    real_start, real_evaluate = loop.start_average, loop.evaluate

    def recording_start(model, *, decay):
        initial.append(copy_of(model))
        return real_start(model, decay=decay)

    def recording_update(average, model, *, step):
        seen.append(copy_of(model))
        update_average(average, model, step=step)

    def recording_evaluate(model, *args, **kwargs):
        scored.append(copy_of(model))
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(loop, "start_average", recording_start)
    monkeypatch.setattr(loop, "update_average", recording_update)
    monkeypatch.setattr(loop, "evaluate", recording_evaluate)
    train(ema_config(shapes, tmp_path / "ema"), progress=False)
    monkeypatch.undo()
    train(ema_config(shapes, tmp_path / "plain", ema_decay=None), progress=False)

    saved = load_checkpoint(tmp_path / "ema" / "last.pt")
    plain = load_checkpoint(tmp_path / "plain" / "last.pt")["state_dict"]
    assert len(seen) == 4 and "trained_state_dict" not in load_checkpoint(tmp_path / "plain" / "last.pt")
    # Averaging changes nothing in training: the optimizer's weights are the plain run's, bit for bit.
    assert all(torch.equal(saved["trained_state_dict"][key], plain[key]) for key in plain)
    assert all(torch.equal(seen[-1][key], plain[key]) for key in plain)
    expected = hand_average(initial[0], seen, decay=0.5)
    for key, value in expected.items():
        torch.testing.assert_close(saved["state_dict"][key].double(), value, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(saved["state_dict"][key], plain[key]) for key in expected)
    # Validation scored the average, which is the model eval and predict load from last.pt.
    assert len(scored) == 1 and all(torch.equal(scored[0][key], saved["state_dict"][key]) for key in scored[0])
    model, meta = model_from_checkpoint(tmp_path / "ema" / "last.pt")
    _, val_set = build_datasets(resolve_recipe(ema_config(shapes, tmp_path)), meta.normalization, ("color",))
    scores = evaluate(model, val_set, num_classes=meta.num_classes, device=torch.device("cpu"))
    with open(tmp_path / "ema" / "log.csv") as stream:
        logged = [row for row in csv.DictReader(stream) if row["mean_iu"]]
    assert float(logged[-1]["mean_iu"]) == pytest.approx(scores["mean_iu"], abs=1e-6)
    assert (tmp_path / "ema" / "best.pt").is_file()
    best = load_checkpoint(tmp_path / "ema" / "best.pt")["state_dict"]  # the one validation, at the last step
    assert all(torch.equal(best[key], saved["state_dict"][key]) for key in best)


def test_resume_continues_the_average_exactly(shapes, tmp_path):
    train(ema_config(shapes, tmp_path / "whole"), progress=False)
    train(ema_config(shapes, tmp_path / "resumed", stop_after=2), progress=False)
    train(ema_config(shapes, tmp_path / "resumed"), resume=True, progress=False)
    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for part in ("state_dict", "trained_state_dict"):
        assert all(torch.equal(whole[part][key], resumed[part][key]) for key in whole[part])
    train(ema_config(shapes, tmp_path / "plain", ema_decay=None, stop_after=2), progress=False)
    with pytest.raises(ValueError, match="written without ema_decay; resume it with ema_decay: null"):
        train(ema_config(shapes, tmp_path / "plain"), resume=True, progress=False)
    with pytest.raises(ValueError, match="written with ema_decay; resume it with the same ema_decay"):
        train(ema_config(shapes, tmp_path / "resumed", ema_decay=None, iters=6), resume=True, progress=False)

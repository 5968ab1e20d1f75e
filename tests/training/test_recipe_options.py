"""Recipe options against independent computations: class-weighted cross-entropy (torch's own weighted loss),
OHEM (pixels sorted by hand), the class-weight rules (counted pixel by pixel), their cache, and training on
concatenated splits (sample order, overlap with validation, no best.pt, exact resume)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fcnseg.checkpoint import load_checkpoint
from fcnseg.distributed import DistContext, global_loss
from fcnseg.training.class_weights import (
    cached_class_weights,
    class_pixel_counts,
    class_statistics,
    enet_weights,
    median_frequency_weights,
)
from fcnseg.training.config import make_config, parse_overrides, resolve_recipe
from fcnseg.training.data import build_datasets, shared_images, train_label_counts
from fcnseg.training.loop import train
from fcnseg.training.losses import loss_terms, segmentation_loss
from fcnseg.training.sampling import SeededSamples


def random_batch(seed: int, *, scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(2, 4, 6, 7, generator=generator)  # (N, K, H, W)
    target = torch.randint(0, 4, (2, 6, 7), generator=generator)  # (N, H, W)
    target[0, :2] = 255
    target[1, 3, :4] = 255
    return logits, target


def test_weighted_loss_is_torchs_weighted_cross_entropy():
    logits, target = random_batch(0)
    weights = torch.tensor([0.5, 2.0, 1.25, 3.0])
    for reduction in ("mean", "sum"):
        expected = F.cross_entropy(logits, target, weight=weights, ignore_index=255, reduction=reduction)
        got = segmentation_loss(logits, target, reduction=reduction, class_weights=weights)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # The training loop's path: terms normalized by global_loss (one process), weights' sum as the normalizer.
    terms = loss_terms(logits, target, class_weights=weights)
    _, value = global_loss(terms, reduction="mean", grad_accum=1, context=DistContext())
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    assert value == pytest.approx(expected.item(), rel=1e-6)
    # Unit weights are the unweighted loss; the weights reach the first head of a multi-task model only.
    assert segmentation_loss(logits, target, reduction="mean", class_weights=torch.ones(4)).item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)
    two_heads = segmentation_loss((logits, logits), (target, target), reduction="mean", class_weights=weights)
    unweighted = F.cross_entropy(logits, target, ignore_index=255)
    assert two_heads.item() == pytest.approx(expected.item() + unweighted.item(), rel=1e-6)


def brute_force_ohem(logits, target, *, threshold, min_kept, weights=None):
    """(weighted mean CE over the kept pixels, number kept), selecting by sorting in Python."""
    logits64 = logits.double().numpy()
    n, _, height, width = logits64.shape  # (N, K, H, W)
    pixels = []  # (true-class probability, flat index, cross-entropy, weight) of each counted pixel
    for b in range(n):
        for i in range(height):
            for j in range(width):
                t = int(target[b, i, j])
                if t == 255:
                    continue
                scores = logits64[b, :, i, j]
                probability = math.exp(scores[t] - scores.max()) / np.exp(scores - scores.max()).sum()
                weight = 1.0 if weights is None else float(weights[t])
                pixels.append((probability, (b * height + i) * width + j, -math.log(probability), weight))
    below = [pixel for pixel in pixels if pixel[0] < threshold]
    kept = below if len(below) >= min_kept else sorted(pixels)[:min_kept]
    return sum(w * ce for _, _, ce, w in kept) / sum(w for *_, w in kept), len(kept)


@pytest.mark.parametrize("threshold, min_kept, weighted, case", [
    (0.3, 0, False, "threshold alone"),
    (0.3, 40, False, "enough pixels below the threshold"),
    (0.3, 60, True, "min_kept hardest (more than are below the threshold), weighted"),
    (0.7, 1000, False, "min_kept above the counted pixels: all of them"),
])
def test_ohem_keeps_the_pixels_a_brute_force_selection_keeps(threshold, min_kept, weighted, case):
    logits, target = random_batch(1, scale=2.0)
    weights = torch.tensor([0.5, 2.0, 1.25, 3.0]) if weighted else None
    expected, kept = brute_force_ohem(logits, target, threshold=threshold, min_kept=min_kept, weights=weights)
    terms = loss_terms(logits, target, class_weights=weights, ohem_threshold=threshold, ohem_min_kept=min_kept)
    got = segmentation_loss(logits, target, reduction="mean", class_weights=weights, ohem_threshold=threshold,
                            ohem_min_kept=min_kept)
    assert got.item() == pytest.approx(expected, rel=1e-5), case
    if not weighted:
        assert int(terms[0][1]) == kept
    counted = int((target != 255).sum())
    below = int((torch.softmax(logits, 1).gather(1, target.clamp(max=3)[:, None])[:, 0][target != 255]
                 < threshold).sum())
    assert 0 < below < counted  # the batch has easy and hard pixels: the threshold selects
    if case.startswith("enough pixels"):
        assert min_kept <= below and kept == below
    if case.startswith("min_kept hardest"):
        assert below < min_kept < counted and kept == min_kept
    if case.startswith("min_kept above"):
        assert kept == counted


def test_ohem_gradient_flows_only_through_the_kept_pixels():
    logits, target = random_batch(2, scale=2.0)
    logits.requires_grad_(True)
    segmentation_loss(logits, target, reduction="sum", ohem_threshold=0.3).backward()
    probability = torch.softmax(logits.detach(), 1).gather(1, target.clamp(max=3)[:, None])[:, 0]
    hard = (target != 255) & (probability < 0.3)
    touched = logits.grad.abs().sum(1) > 0  # (N, H, W)
    assert torch.equal(touched, hard)


# Three 2x3 label maps, classes 0-3 (class 3 never appears), 255 void.
LABELS = [
    np.array([[0, 0, 1], [0, 255, 1]]),
    np.array([[2, 2, 2], [0, 0, 0]]),
    np.array([[255, 255, 1], [1, 1, 1]]),
]


def test_class_weight_rules_against_pixel_counting():
    counts = [class_pixel_counts(labels, num_classes=4, ignore_index=255) for labels in LABELS]
    statistics = class_statistics(counts, num_classes=4)
    # By hand: class 0 has 3 + 3 pixels in images 1 and 2 (5 + 6 labelled pixels); class 1 has 2 + 4 in images
    # 1 and 3 (5 + 4); class 2 has 3 in image 2 (6). Frequencies 6/11, 6/9, 3/6; median 6/11.
    assert statistics.class_pixels == (6, 6, 3, 0) and statistics.image_pixels == (11, 9, 6, 0)
    frequency = [6 / 11, 6 / 9, 3 / 6]
    expected = [(6 / 11) / f for f in frequency] + [0.0]
    assert median_frequency_weights(statistics) == pytest.approx(expected)
    shares = [6 / 15, 6 / 15, 3 / 15, 0.0]  # of the 15 labelled pixels
    assert enet_weights(statistics) == pytest.approx([1 / math.log(1.02 + p) for p in shares])


def test_class_weights_are_cached_by_data_set_split_and_rule(tmp_path):
    path = tmp_path / "class_weights.json"
    key = {"dataset": "folder", "root": "/data", "splits": ["train"], "ignore_index": 255}
    calls = []

    def counts():
        calls.append(1)
        return [class_pixel_counts(labels, num_classes=4, ignore_index=255) for labels in LABELS]

    first = cached_class_weights(path=path, key=key, rule="enet", per_image_counts=counts, num_classes=4)
    again = cached_class_weights(path=path, key=key, rule="enet", per_image_counts=counts, num_classes=4)
    assert first == again and len(calls) == 1  # read back, not recomputed
    record = json.loads(path.read_text())
    assert record["key"]["rule"] == "enet" and record["class_pixels"] == [6, 6, 3, 0] and record["num_images"] == 3
    other_split = dict(key, splits=["train", "val"])
    cached_class_weights(path=path, key=other_split, rule="enet", per_image_counts=counts, num_classes=4)
    median = cached_class_weights(path=path, key=other_split, rule="median_frequency", per_image_counts=counts,
                                  num_classes=4)
    assert len(calls) == 3 and median[3] == 0.0  # a stale key is recomputed, never used


def test_recipe_option_config_keys():
    config = make_config(parse_overrides(["class_weights=[1, 2.5, 1e-3]", "ohem_threshold=0.7", "ohem_min_kept=100",
                                          "train_splits=[train, val]"]))
    assert config.class_weights == (1.0, 2.5, 0.001) and config.train_splits == ("train", "val")
    assert (config.ohem_threshold, config.ohem_min_kept) == (0.7, 100)
    assert make_config({"class_weights": "enet"}).class_weights == "enet"
    assert make_config({}).class_weights is None and make_config({}).train_splits is None
    with pytest.raises(ValueError, match="'class_weights' expects"):
        make_config({"class_weights": [1, "heavy"]})
    with pytest.raises(ValueError, match="'train_splits' expects"):
        make_config({"train_splits": "train"})
    for values, message in [
        ({"class_weights": "median"}, "class_weights must be one of"),
        ({"class_weights": [1, -1]}, "non-negative"),
        ({"ohem_threshold": 1.5}, "ohem_threshold must be"),
        ({"ohem_min_kept": 10}, "needs ohem_threshold"),
        ({"train_splits": ["train", "train"]}, "distinct"),
        ({"hue_jitter": 0.7}, "hue_jitter must be in"),
        ({"color_jitter": -0.1}, "color_jitter must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            resolve_recipe(make_config(values))


def test_concatenated_splits_share_the_sample_order_and_overlap_validation(shapes):
    config = resolve_recipe(make_config({"dataset": "folder", "root": str(shapes), "train_splits": ["train", "val"],
                                         "crop_size": 32, "workers": 0}))
    train_set, val_set = build_datasets(config, "lite", ("color",))
    assert len(train_set) == 20 and train_set.info == val_set.info and shared_images(train_set, val_set) == 4
    order = SeededSamples(train_set, seed=0)
    assert sorted(order.index_of(g) for g in range(20)) == list(range(20))  # one epoch: every image once
    assert [order.index_of(g) for g in (3, 27)] == [SeededSamples(train_set, seed=0).index_of(g) for g in (3, 27)]
    assert train_set[order.index_of(5)][0].shape == (3, 32, 32)
    alone, _ = build_datasets(resolve_recipe(make_config({"dataset": "folder", "root": str(shapes), "workers": 0})),
                              "lite", ("color",))
    assert shared_images(alone, val_set) == 0
    # Label counts, read without transforms, against the mask files counted directly.
    stems = (shapes / "train.txt").read_text().split() + (shapes / "val.txt").read_text().split()
    expected = [np.bincount(np.array(Image.open(shapes / "masks" / f"{stem}.png")).ravel(), minlength=3)
                for stem in stems]
    got = list(train_label_counts(config, modalities=("color",)))
    assert len(got) == 20 and all(np.array_equal(a, b) for a, b in zip(got, expected))


def recipe_config(root, out, **changes):
    values = {
        "model": "fcn8s-lite0", "dataset": "folder", "root": str(root), "out": str(out), "iters": 2, "batch_size": 2,
        "crop_size": 32, "scale_range": None, "lr": 1e-2, "val_every": 2, "workers": 0, "seed": 0,
        "train_splits": ["train", "val"], "class_weights": "median_frequency", "ohem_threshold": 0.7,
        "ohem_min_kept": 500,
    }
    return make_config({**values, **changes})


def test_training_on_train_and_val_writes_no_best_and_resumes_exactly(shapes, tmp_path, capsys):
    whole = train(recipe_config(shapes, tmp_path / "whole"), progress=False)
    assert "best.pt is not written" in capsys.readouterr().out
    assert whole["best_checkpoint"] is None and whole["val_images_in_train"] == 4
    assert not (tmp_path / "whole" / "best.pt").exists() and (tmp_path / "whole" / "last.pt").is_file()
    log = (tmp_path / "whole" / "log.csv").read_text().splitlines()
    assert log[0].endswith(",val_images_in_train") and log[-1].endswith(",4")
    cache = json.loads((tmp_path / "whole" / "class_weights.json").read_text())
    assert cache["key"]["splits"] == ["train", "val"] and cache["num_images"] == 20
    train(recipe_config(shapes, tmp_path / "resumed", stop_after=1), progress=False)
    train(recipe_config(shapes, tmp_path / "resumed"), resume=True, progress=False)
    expected = load_checkpoint(tmp_path / "whole" / "last.pt")["state_dict"]
    got = load_checkpoint(tmp_path / "resumed" / "last.pt")["state_dict"]
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    with pytest.raises(ValueError, match="lists 2 weights; the data set has 3"):
        train(recipe_config(shapes, tmp_path / "bad", class_weights=[1.0, 2.0]), progress=False)


def test_cache_images_trains_the_weights_the_files_train(shapes, tmp_path, capsys):
    from_files = train(recipe_config(shapes, tmp_path / "files"), progress=False)
    assert "decoded" not in capsys.readouterr().out
    kept = train(recipe_config(shapes, tmp_path / "kept", cache_images=True, workers=1), progress=False)
    assert "cache_images: 20 training samples decoded" in capsys.readouterr().out
    expected = load_checkpoint(tmp_path / "files" / "last.pt")["state_dict"]
    got = load_checkpoint(tmp_path / "kept" / "last.pt")["state_dict"]
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert kept["best_checkpoint"] is from_files["best_checkpoint"] is None


def test_amp_trains_in_float32_where_bf16_is_not_fast(shapes, tmp_path, capsys, monkeypatch):
    """``amp=true`` on a device without fast bf16 kernels: the weights equal an ``amp=false`` run's, bit for bit,
    and the run says so; where bf16 is fast (simulated), autocast runs and the weights differ."""
    from fcnseg.training import loop

    def last_weights(name, **changes):
        train(recipe_config(shapes, tmp_path / name, train_splits=["train"], class_weights=None, **changes),
              progress=False)
        return load_checkpoint(tmp_path / name / "last.pt")["state_dict"]

    monkeypatch.setattr(loop, "bf16_supported", lambda device: False)
    plain = last_weights("plain")
    capsys.readouterr()
    fallback = last_weights("fallback", amp=True)
    assert "amp=true, but cpu has no fast bf16 kernels" in capsys.readouterr().out
    assert all(torch.equal(plain[key], fallback[key]) for key in plain)
    monkeypatch.setattr(loop, "bf16_supported", lambda device: True)
    bf16 = last_weights("bf16", amp=True)
    assert "no fast bf16 kernels" not in capsys.readouterr().out
    assert not all(torch.equal(plain[key], bf16[key]) for key in plain)

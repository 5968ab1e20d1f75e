"""fcnseg eval --report: the report's numbers against a brute-force count, the worst list, the pictures' pixels."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from shapes_data import CLASSES, make_shapes_folder

from fcnseg.checkpoint import ModelMeta, make_checkpoint, model_from_checkpoint, save_atomically
from fcnseg.cli import main
from fcnseg.data import build_dataset, eval_transforms
from fcnseg.data.palettes import generated_palette
from fcnseg.evaluate import evaluate
from fcnseg.models.registry import build_model
from fcnseg.report import (
    IGNORED_COLOR,
    WRONG_COLOR,
    PerImageScores,
    error_map,
    mean_iu_of,
    row_normalized,
)

NUM_CLASSES = len(CLASSES)


@pytest.fixture(scope="module")
def shapes_with_void(tmp_path_factory):
    """The shapes folder with 6 val images, one of whose masks has a band of ignored (255) pixels."""
    root = make_shapes_folder(tmp_path_factory.mktemp("shapes-void"), train=1, val=6)
    stem = (root / "val.txt").read_text().split()[0]
    mask = np.array(Image.open(root / "masks" / f"{stem}.png"))
    mask[:, :10] = 255
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random (but seeded) three-class model: imperfect, different predictions per image."""
    model = build_model("fcn32s-lite0", num_classes=NUM_CLASSES)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    meta = ModelMeta(model="fcn32s-lite0", num_classes=NUM_CLASSES, class_names=CLASSES,
                     palette=generated_palette(NUM_CLASSES), normalization="lite")
    path = tmp_path_factory.mktemp("report-model") / "random.pt"
    save_atomically(make_checkpoint(model.eval(), meta), path)
    return path


@pytest.fixture(scope="module")
def brute_force(checkpoint, shapes_with_void):
    """Every val image's (truth, prediction), computed here without evaluate or the report."""
    model, meta = model_from_checkpoint(checkpoint)
    dataset = build_dataset("folder", root=shapes_with_void, split="val",
                            transforms=eval_transforms(normalization=meta.normalization))
    pairs = []
    with torch.no_grad():
        for image, mask in dataset:
            pairs.append((mask.numpy(), model(image[None])[0].argmax(0).numpy()))
    return pairs


def brute_counts(pairs):
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)  # (truth, prediction)
    for truth, prediction in pairs:
        for t, p in zip(truth.reshape(-1), prediction.reshape(-1)):
            if t != 255:
                counts[t, p] += 1
    return counts


def brute_iu(counts):
    """Per-class IU by the definition: n_ii / (t_i + sum_j n_ji - n_ii), None where the class is nowhere."""
    result = []
    for i in range(len(counts)):
        union = counts[i].sum() + counts[:, i].sum() - counts[i, i]
        result.append(counts[i, i] / union if union else None)
    return result


def run_report(checkpoint, root, out, *extra):
    return main(["eval", "--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(root),
                 "--split", "val", "--report", str(out), *extra])


def test_report_numbers_match_a_brute_force_count(checkpoint, shapes_with_void, brute_force, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_report(checkpoint, shapes_with_void, out) == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("confusion.png", "per_class_iu.png", "report.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "confusion.png").format == "PNG"
    report = json.loads((out / "report.json").read_text())
    counts = brute_counts(brute_force)
    assert report["confusion"] == counts.tolist()
    assert [row["class"] for row in report["per_class_iu"]] == list(CLASSES)
    for row, expected in zip(report["per_class_iu"], brute_iu(counts)):
        assert (row["iu"] is None) == (expected is None)
        if expected is not None:
            assert math.isclose(row["iu"], expected, rel_tol=1e-9)
    ious = [iu for iu in brute_iu(counts) if iu is not None]
    assert math.isclose(report["scores"]["mean_iu"], sum(ious) / len(ious), rel_tol=1e-9)
    assert report["scores"]["num_images"] == 6


def test_worst_list_is_sorted_scored_and_drawn(checkpoint, shapes_with_void, brute_force, tmp_path):
    out = tmp_path / "report"
    assert run_report(checkpoint, shapes_with_void, out, "--worst", "4", "--json") == 0
    worst = json.loads((out / "report.json").read_text())["worst"]
    assert len(worst) == 4 and [row["rank"] for row in worst] == [1, 2, 3, 4]
    per_image = [mean_iu_of(brute_counts([pair])) for pair in brute_force]
    expected = sorted(range(len(per_image)), key=lambda i: (per_image[i], i))[:4]
    assert [row["index"] for row in worst] == expected
    assert [row["mean_iu"] for row in worst] == sorted(row["mean_iu"] for row in worst)
    for row in worst:
        assert math.isclose(row["mean_iu"], per_image[row["index"]], rel_tol=1e-9)
        truth, prediction = brute_force[row["index"]]
        labelled = truth != 255
        assert math.isclose(row["pixel_error"], (truth != prediction)[labelled].mean(), rel_tol=1e-9)
        panel = Image.open(out / row["file"])
        assert panel.width > 4 * 64 and panel.height > 64  # four tiles, titles and a legend
    assert sorted(path.name for path in (out / "worst").iterdir()) == sorted(row["file"][6:] for row in worst)


def test_worst_defaults_to_eight_or_every_image(checkpoint, shapes_with_void, tmp_path):
    assert run_report(checkpoint, shapes_with_void, tmp_path / "report") == 0
    assert len(json.loads((tmp_path / "report" / "report.json").read_text())["worst"]) == 6  # min(8, 6 images)


def test_report_is_refused_under_torchrun(checkpoint, shapes_with_void, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_report(checkpoint, shapes_with_void, tmp_path / "report") == 2
    assert "without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_per_image_callback_leaves_the_scores_unchanged(checkpoint, shapes_with_void):
    model, meta = model_from_checkpoint(checkpoint)
    dataset = build_dataset("folder", root=shapes_with_void, split="val",
                            transforms=eval_transforms(normalization=meta.normalization))
    seen = []
    with_callback = evaluate(model, dataset, num_classes=NUM_CLASSES, max_images=5,
                             per_image=lambda index, prediction, mask: seen.append((index, prediction.shape)))
    assert with_callback == evaluate(model, dataset, num_classes=NUM_CLASSES, max_images=5)
    assert seen == [(index, (64, 64)) for index in range(5)]


def test_per_image_scores_keep_only_the_worst():
    rng = np.random.default_rng(0)
    tracker = PerImageScores(num_classes=3, keep=3)
    scores = {}
    for index in rng.permutation(20):  # any order of indices
        truth = rng.integers(0, 3, (6, 7))
        prediction = np.where(rng.random((6, 7)) < index / 25, (truth + 1) % 3, truth)  # more errors, higher index
        tracker(int(index), torch.from_numpy(prediction), torch.from_numpy(truth))
        scores[int(index)] = mean_iu_of(brute_counts([(truth, prediction)]))
    expected = sorted(scores, key=lambda i: (scores[i], i))[:3]
    assert [image.index for image in tracker.worst()] == expected
    assert tracker.num_images == 20 and tracker.confusion.sum() == 20 * 42


def test_images_without_labelled_pixels_are_not_ranked():
    tracker = PerImageScores(num_classes=3, keep=5)
    tracker(0, torch.zeros(4, 4, dtype=torch.long), torch.full((4, 4), 255))
    tracker(1, torch.zeros(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.long))
    assert [image.index for image in tracker.worst()] == [1]


def test_row_normalized_rows_sum_to_one():
    confusion = np.array([[5, 3, 2], [0, 0, 0], [1, 0, 9]])
    fractions = row_normalized(torch.from_numpy(confusion))
    np.testing.assert_allclose(fractions.sum(1), [1, 0, 1])  # a class without pixels stays a zero row
    np.testing.assert_allclose(fractions[0], [0.5, 0.3, 0.2])
    random = np.random.default_rng(1).integers(1, 1000, (11, 11))
    np.testing.assert_allclose(row_normalized(random).sum(1), np.ones(11))


def test_error_map_colours_wrong_red_and_nothing_else():
    photo = np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    photo[0, 0] = (255, 0, 0)  # a red photo pixel that is right must not read as an error
    truth = np.array([[0, 1, 2, 0, 1, 2]] * 5)
    prediction = truth.copy()
    prediction[1:3, 2:5] = (prediction[1:3, 2:5] + 1) % 3  # 6 wrong pixels
    truth[4, :2] = 255  # 2 ignored pixels (their prediction is whatever)
    prediction[4, 0] = 1
    picture = error_map(photo, truth=truth, prediction=prediction)
    assert picture.shape == (5, 6, 3) and picture.dtype == np.uint8
    for y in range(5):
        for x in range(6):
            red = tuple(picture[y, x]) == WRONG_COLOR
            if truth[y, x] == 255:
                assert tuple(picture[y, x]) == IGNORED_COLOR
            elif truth[y, x] != prediction[y, x]:
                assert red
            else:
                assert not red and picture[y, x].max() <= 90  # the photo, dimmed

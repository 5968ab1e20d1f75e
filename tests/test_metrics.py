"""The paper's metrics against a brute-force per-pixel computation."""

import math

import numpy as np
import pytest
import torch

from fcnseg.metrics import ConfusionMatrix, scores_from_confusion


def brute_force_scores(preds, targets, num_classes, ignore_index):
    """Per-pixel loops and per-class sets, written from the paper's definitions (section 5)."""
    n = [[0] * num_classes for _ in range(num_classes)]
    for pred, target in zip(preds, targets):
        for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
            if t != ignore_index:
                n[t][p] += 1
    t_i = [sum(row) for row in n]
    predicted = [sum(n[i][j] for i in range(num_classes)) for j in range(num_classes)]
    total = sum(t_i)
    accs = [n[i][i] / t_i[i] for i in range(num_classes) if t_i[i] > 0]
    ius = {
        i: n[i][i] / (t_i[i] + predicted[i] - n[i][i])
        for i in range(num_classes)
        if t_i[i] + predicted[i] > 0
    }
    return {
        "pixel_acc": sum(n[i][i] for i in range(num_classes)) / total,
        "mean_acc": sum(accs) / len(accs),
        "mean_iu": sum(ius.values()) / len(ius),
        "fwavacc": sum(t_i[i] * ius[i] for i in ius if t_i[i] > 0) / total,
        "per_class_iu": [ius.get(i, math.nan) for i in range(num_classes)],
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_classes = 6
    matrix = ConfusionMatrix(num_classes, ignore_index=255)
    preds, targets = [], []
    for _ in range(3):
        # Class 5 never appears anywhere (NaN); class 4 only in predictions (IU 0, accuracy undefined).
        target = rng.integers(0, 4, size=(2, 7, 9))
        target[rng.random(target.shape) < 0.2] = 255
        pred = rng.integers(0, 5, size=(2, 7, 9))
        matrix.update(torch.from_numpy(pred), torch.from_numpy(target))
        preds.append(pred)
        targets.append(target)
    ours = matrix.compute()
    expected = brute_force_scores(preds, targets, num_classes, 255)
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fwavacc"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-12), key
    np.testing.assert_allclose(ours["per_class_iu"], expected["per_class_iu"], equal_nan=True)
    assert math.isnan(ours["per_class_iu"][5]) and ours["per_class_iu"][4] == 0.0


def test_accepts_numpy_and_any_batch_shape():
    matrix = ConfusionMatrix(3)
    matrix.update(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 255]))
    matrix.update(torch.tensor([[[1]]]), torch.tensor([[[1]]]))
    assert matrix.counts().tolist() == [[1, 0, 0], [0, 2, 1], [0, 0, 0]]
    assert matrix.compute()["pixel_acc"] == pytest.approx(3 / 4)


def test_perfect_prediction_scores_one():
    for seed in range(8):  # f.w. IU sums class frequencies: 1 up to rounding (seed 6 gives 0.9999999999999999)
        target = torch.randint(0, 4, (3, 10, 10), generator=torch.Generator().manual_seed(seed))
        matrix = ConfusionMatrix(4)
        matrix.update(target, target)
        scores = matrix.compute()
        assert scores["pixel_acc"] == scores["mean_acc"] == scores["mean_iu"] == 1.0
        assert scores["fwavacc"] == pytest.approx(1.0, abs=1e-12)


def test_bad_inputs_are_clear_errors():
    matrix = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        matrix.update(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="target labels"):
        matrix.update(torch.zeros(4), torch.tensor([0, 1, 7, 2]))
    with pytest.raises(ValueError, match="predicted labels"):
        matrix.update(torch.tensor([0, 3, 0, 0]), torch.zeros(4))


def test_scores_from_confusion_is_pure():
    hist = np.array([[5, 1], [2, 2]])
    scores = scores_from_confusion(hist)
    assert scores["pixel_acc"] == pytest.approx(7 / 10)
    assert scores["mean_iu"] == pytest.approx((5 / 8 + 2 / 5) / 2)
    assert hist.tolist() == [[5, 1], [2, 2]]

"""SIFT Flow's multi-task FCNs: heads against single-task FCNs, the summed loss, and training on tiny files."""

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image

from fcnseg.checkpoint import ModelMeta, make_checkpoint, model_from_checkpoint
from fcnseg.cli import main
from fcnseg.distributed import DistContext, global_loss
from fcnseg.models import FCN8s
from fcnseg.models.multitask import SIFTFlowFCN8s, SIFTFlowFCN32s, SIFTFlowScores
from fcnseg.models.registry import build_model
from fcnseg.training.losses import loss_terms, segmentation_loss

H, W = 32, 40
SUB = "spatial_envelope_256x256_static_8outdoorcategories"
REFERENCE_FCN8S_LAYERS = (  # siftflow-fcn8s/net.py, per task
    "score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8",
)


def make_siftflow(root: Path) -> Path:
    """Four images in the real layout: sky above, road or sea below at varying heights, one void pixel."""
    (root / "Images" / SUB).mkdir(parents=True)
    (root / "SemanticLabels" / SUB).mkdir(parents=True)
    (root / "GeoLabels" / SUB).mkdir(parents=True)
    names = ["coast_n243003", "street_urb506", "coast_arnat59", "street_par21"]
    for index, name in enumerate(names):
        horizon = 10 + 4 * index
        image = np.full((H, W, 3), (120, 160, 230), dtype=np.uint8)  # sky blue
        image[horizon:] = (90, 90, 90) if "street" in name else (30, 60, 140)
        Image.fromarray(image).save(root / "Images" / SUB / f"{name}.jpg", quality=100)
        semantic = np.full((H, W), 28, dtype=np.float64)  # sky (1-based)
        semantic[horizon:] = 22 if "street" in name else 25  # road or sea
        semantic[0, 0] = 0  # unlabeled
        geometric = np.ones((H, W), dtype=np.int16)  # sky
        geometric[horizon:] = 2  # horizontal
        scipy.io.savemat(root / "SemanticLabels" / SUB / f"{name}.mat", {"S": semantic})
        scipy.io.savemat(root / "GeoLabels" / SUB / f"{name}.mat", {"S": geometric})
    (root / "trainval.txt").write_text("\n".join(names[:2]) + "\n")
    (root / "test.txt").write_text("\n".join(names[2:]) + "\n")
    return root


def test_reference_layer_names():
    model = SIFTFlowFCN32s(num_classes=5)
    assert {"score_fr_sem.weight", "upscore_sem.weight", "score_fr_geo.weight", "upscore_geo.weight"} <= set(
        model.state_dict()
    )
    assert not hasattr(model, "score_fr") and model.head_classes == {"sem": 5, "geo": 3}
    with torch.device("meta"):
        names = set(build_model("fcn8s-siftflow", num_classes=33).state_dict())
        sixteen = build_model("fcn16s-siftflow", num_classes=33)
    assert {f"{layer}_{task}.weight" for layer in REFERENCE_FCN8S_LAYERS for task in ("sem", "geo")} <= names
    assert hasattr(sixteen, "upscore16_sem") and not hasattr(sixteen, "score_pool3_geo")


def single_task_state(state: dict, task: str) -> dict:
    """The trunk and ``task``'s layers, renamed as a single-task FCN's (``score_fr_sem`` -> ``score_fr``)."""
    renamed = {}
    for key, value in state.items():
        if "_sem." not in key and "_geo." not in key:
            renamed[key] = value  # the shared trunk
        elif f"_{task}." in key:
            renamed[key.replace(f"_{task}.", ".")] = value
    return renamed


def test_each_head_is_the_single_task_fcn_on_the_shared_trunk():
    """Copy the trunk and one task's layers into a single-task FCN-8s: it must score exactly as that head."""
    torch.manual_seed(0)
    model = SIFTFlowFCN8s(num_classes=4).eval()
    for name, param in model.named_parameters():
        if name.startswith("score"):
            torch.nn.init.normal_(param, std=0.01)
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        scores = model(x)
        assert isinstance(scores, SIFTFlowScores) and scores._fields == ("semantic", "geometric")
        for task, classes, logits in (("sem", 4, scores.semantic), ("geo", 3, scores.geometric)):
            with torch.device("meta"):  # no random init: every weight comes from the multi-task model
                reference = FCN8s(num_classes=classes).eval()
            reference = reference.to_empty(device="cpu")
            reference.load_state_dict(single_task_state(model.state_dict(), task), strict=True)
            assert logits.shape == (2, classes, H, W)
            torch.testing.assert_close(logits, reference(x), rtol=1e-5, atol=1e-5)
    # Checkpoints know the multi-task models: the round trip rebuilds the same model.
    meta = ModelMeta(model="fcn8s-siftflow", num_classes=4, class_names=tuple("abcd"), palette=((0, 0, 0),) * 4,
                     normalization="caffe-siftflow")
    reloaded, _ = model_from_checkpoint(make_checkpoint(model, meta))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).geometric, scores.geometric)


def test_loss_is_the_sum_of_the_heads_losses():
    torch.manual_seed(1)
    semantic, geometric = torch.randn(2, 33, 6, 7), torch.randn(2, 3, 6, 7)
    semantic_mask, geometric_mask = torch.randint(0, 33, (2, 6, 7)), torch.randint(0, 3, (2, 6, 7))
    semantic_mask[0, :2] = 255
    geometric_mask[1, 3:] = 255
    outputs, masks = SIFTFlowScores(semantic, geometric), (semantic_mask, geometric_mask)
    for reduction in ("sum", "mean"):
        expected = F.cross_entropy(semantic, semantic_mask, ignore_index=255, reduction=reduction) + F.cross_entropy(
            geometric, geometric_mask, ignore_index=255, reduction=reduction
        )
        assert segmentation_loss(outputs, masks, reduction=reduction).item() == pytest.approx(expected.item(), rel=1e-5)
        loss, value = global_loss(loss_terms(outputs, masks), reduction=reduction, grad_accum=1, context=DistContext())
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and value == pytest.approx(loss.item())
    # A single-head model on SIFT Flow learns the semantic labels.
    assert segmentation_loss(semantic, masks, reduction="sum").item() == pytest.approx(
        F.cross_entropy(semantic, semantic_mask, ignore_index=255, reduction="sum").item(), rel=1e-5
    )


def test_training_on_siftflow_scores_both_heads(tmp_path, capsys):
    root = make_siftflow(tmp_path / "siftflow")
    out = tmp_path / "run"
    assert main(["train", "--model", "fcn8s-siftflow", "--dataset", "siftflow", "--root", str(root), "--out", str(out),
                 "--iters", "2", "--batch-size", "1", "train_split=trainval", "val_split=test", "crop_size=0",
                 "scale_range=null", "optimizer=sgd", "momentum=0", "lr=0.001", "val_every=2", "workers=0"]) == 0
    assert "geometric mean IU" in capsys.readouterr().out
    with (out / "log.csv").open() as stream:
        row = list(csv.DictReader(stream))[-1]
    assert row["step"] == "2" and float(row["loss"]) > 0
    for metric in ("pixel_acc", "mean_acc", "mean_iu", "fwavacc"):  # both heads, on the two test images
        assert 0 <= float(row[metric]) <= 1 and 0 <= float(row[f"geometric_{metric}"]) <= 1
    for checkpoint in ("best.pt", "last.pt"):
        (out / checkpoint).unlink()  # VGG16 checkpoints are 0.5 GB each: leave no copies in pytest's tmp folders

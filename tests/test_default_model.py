"""The model shipped inside the package: it loads, segments the shipped examples, and (when the real CamVid
is on this machine) scores as documented."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.checkpoint import ASSETS, default_checkpoint_path, load_checkpoint, model_from_checkpoint
from fcnseg.cli import main
from fcnseg.data.palettes import CAMVID_PALETTE
from fcnseg.inference import bf16_supported

# The real CamVid sits beside the checkout (../shared/data/camvid); FCNSEG_CAMVID_ROOT overrides.
CAMVID = Path(os.environ.get("FCNSEG_CAMVID_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"))


def test_shipped_checkpoint_is_small_and_complete():
    path = default_checkpoint_path()
    assert path.stat().st_size < 20e6  # issue 17: the shipped file stays under 20 MB (fp16)
    checkpoint = load_checkpoint(path)
    assert "optimizer" not in checkpoint and checkpoint["model"] == "fcn4s-lite1"
    model, meta = model_from_checkpoint(path)
    assert meta.class_names[:4] == ("Sky", "Building", "Pole", "Road") and meta.num_classes == 11
    assert meta.palette == CAMVID_PALETTE and meta.normalization == "lite"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 on disk, fp32 in memory


def test_predict_without_checkpoint_uses_the_shipped_model(tmp_path, capsys):
    example = ASSETS / "examples" / "0016E5_07997.png"
    assert main(["predict", str(example), "--out", str(tmp_path)]) == 0
    labels = Image.open(tmp_path / "0016E5_07997_labels.png")
    assert labels.size == (480, 360)
    out = capsys.readouterr().out
    # A street scene: road and building dominate.
    shares = dict(part.rsplit(" ", 1) for part in out.split(": ", 1)[1].strip().split(", "))
    assert int(shares["Road"].rstrip("%")) > 15 and int(shares["Building"].rstrip("%")) > 15


@pytest.mark.skipif(not (CAMVID / "val.txt").is_file(), reason="the real CamVid is not on this machine")
def test_shipped_model_scores_well_on_real_camvid_val(capsys):
    assert main(["eval", "--root", str(CAMVID), "--split", "val", "--max-images", "12", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["num_images"] == 12 and scores["mean_iu"] > 0.55


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no oneDNN bf16 kernels on this CPU")
def test_predict_bf16_gives_nearly_the_float32_labels(tmp_path):
    example = ASSETS / "examples" / "0016E5_07997.png"
    assert main(["predict", str(example), "--out", str(tmp_path / "fp32"), "--overlay", "none"]) == 0
    assert main(["predict", str(example), "--out", str(tmp_path / "bf16"), "--overlay", "none", "--bf16"]) == 0
    fp32, bf16 = (np.asarray(Image.open(tmp_path / kind / "0016E5_07997_labels.png")) for kind in ("fp32", "bf16"))
    assert fp32.shape == bf16.shape == (360, 480)
    assert (fp32 == bf16).mean() > 0.99  # 0.27% of CamVid val's pixels change label (experiments/bf16_camvid.py)

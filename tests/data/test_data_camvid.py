"""CamVid (SegNet layout) on tiny files: list formats, void -> 255, and bad inputs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from fcnseg.data import CamVidDataset, DataError, build_dataset
from fcnseg.data.camvid import CAMVID_INFO

H, W = 20, 30
NAMES = ["0001TP_006690", "0001TP_006720", "Seq05VD_f00000"]


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def labels_for(index: int) -> np.ndarray:
    labels = np.full((H, W), 3, dtype=np.uint8)  # Road
    labels[:5] = 0  # Sky
    labels[10, :] = 11  # void
    labels[15, 7] = 10 - index  # Bicyclist, Pedestrian, Car
    return labels


def make_camvid(root: Path, split: str = "train", list_style: str = "segnet") -> Path:
    for index, name in enumerate(NAMES):
        image = np.zeros((H, W, 3), dtype=np.uint8)
        image[..., 0] = 40 * index
        image[:, :W // 2, 2] = 255
        write_png(root / split / f"{name}.png", image)
        write_png(root / f"{split}annot" / f"{name}.png", labels_for(index))  # grayscale "L"
    lines = {
        "segnet": [f"/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/{n}.png" for n in NAMES],
        "relative": [f"{split}/{n}.png {split}annot/{n}.png" for n in NAMES],
    }.get(list_style)
    if lines is not None:
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("list_style", ["segnet", "relative", None])
def test_camvid_pairs_and_void(tmp_path, list_style):
    dataset = build_dataset("camvid", root=make_camvid(tmp_path, list_style=list_style), split="train")
    assert len(dataset) == 3 and dataset.info.num_classes == 11
    assert [sample[0].name for sample in dataset.samples] == [f"{n}.png" for n in NAMES]
    image, mask = dataset[2]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert image[:, 0, 0].tolist() == [80, 0, 255] and image[:, 0, W - 1].tolist() == [80, 0, 0]
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (H, W)
    assert mask[0, 0] == 0 and mask[19, 29] == 3 and mask[15, 7] == 8
    assert (mask[10] == 255).all()  # void 11 -> ignore 255
    assert set(mask.unique().tolist()) == {0, 3, 8, 255}


def test_camvid_info():
    assert CAMVID_INFO.class_names[0] == "Sky" and CAMVID_INFO.class_names[-1] == "Bicyclist"
    assert CAMVID_INFO.palette[4] == (60, 40, 222) and len(CAMVID_INFO.palette) == 11


def test_camvid_rgb_mask_is_refused(tmp_path):
    root = make_camvid(tmp_path)
    path = root / "trainannot" / f"{NAMES[1]}.png"
    write_png(path, np.zeros((H, W, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="mode 'RGB'") as error:
        CamVidDataset(root, "train")[1]
    assert str(path) in str(error.value)


def test_camvid_label_outside_classes(tmp_path):
    root = make_camvid(tmp_path)
    path = root / "trainannot" / f"{NAMES[0]}.png"
    labels = labels_for(0)
    labels[1, 1] = 12
    write_png(path, labels)
    with pytest.raises(DataError, match=r"\[12\]") as error:
        CamVidDataset(root, "train")[0]
    assert str(path) in str(error.value)


def test_camvid_missing_folders_and_files(tmp_path):
    root = make_camvid(tmp_path)
    with pytest.raises(DataError, match="valannot|val"):
        CamVidDataset(root, "val")
    (root / "train" / f"{NAMES[2]}.png").unlink()
    with pytest.raises(DataError, match=f"{NAMES[2]}.png"):
        CamVidDataset(root, "train")
    (root / "train.txt").write_text("\n")
    with pytest.raises(DataError, match="empty split.*train.txt"):
        CamVidDataset(root, "train")


def load_sequence_split_script():
    import importlib.util

    path = Path(__file__).parents[2] / "experiments" / "camvid_sequence_split.py"
    spec = importlib.util.spec_from_file_location("camvid_sequence_split", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sequence_hold_out_root(tmp_path):
    """experiments/camvid_sequence_split.py: the held-out sequence is val, every other train + val frame is train."""
    source = make_camvid(tmp_path / "camvid", split="train")
    make_camvid(source, split="val", list_style=None)  # same names in val: the last write wins, like a real overlap
    for name in NAMES:  # rename val's frames so the two splits are distinct
        for folder in ("val", "valannot"):
            (source / folder / f"{name}.png").rename(source / folder / f"{name.replace('_', '_9')}.png")
    script = load_sequence_split_script()
    counts = script.write_split_root(source, tmp_path / "proxy", hold_out="Seq05VD")
    assert counts == {"train": 4, "val": 2}
    train = build_dataset("camvid", root=tmp_path / "proxy", split="train")
    val = build_dataset("camvid", root=tmp_path / "proxy", split="val")
    assert sorted(s[0].name for s in val.samples) == ["Seq05VD_9f00000.png", "Seq05VD_f00000.png"]
    assert all(s[0].name.startswith("0001TP") for s in train.samples)
    image, mask = val[1]  # Seq05VD_f00000: index 2 of NAMES, its label and pixels come through the links
    assert image[:, 0, 0].tolist() == [80, 0, 255] and mask[15, 7] == 8 and (mask[10] == 255).all()
    with pytest.raises(SystemExit, match="no frame of sequence 'XXXX'"):
        script.write_split_root(source, tmp_path / "other", hold_out="XXXX")


def test_kept_decoded_samples_are_the_files_samples(tmp_path):
    root = make_camvid(tmp_path)
    from_files = CamVidDataset(root, "train")
    expected = [from_files[index] for index in range(3)]
    kept = CamVidDataset(root, "train")
    assert kept.keep_decoded() == 3 * (3 * H * W + H * W)  # uint8 images and masks
    for path in (root / "train").glob("*.png"):
        path.unlink()  # from now on the samples can only come from memory
    for index in range(3):
        image, mask = kept[index]
        assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
        assert mask.dtype == torch.int64 and torch.equal(image, expected[index][0])
        assert torch.equal(mask, expected[index][1])
    with pytest.raises(DataError, match="cannot read image"):
        from_files[0]


def test_keep_decoded_refuses_multi_input_data_sets(tmp_path):
    class TwoInputs(CamVidDataset):
        def __getitem__(self, index):
            return super().__getitem__(index), super().__getitem__(index)

    with pytest.raises(DataError, match="cache_images: camvid reads more than one"):
        TwoInputs(make_camvid(tmp_path), "train").keep_decoded()

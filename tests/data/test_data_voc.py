"""PASCAL VOC, SBD and seg11valid on tiny files written in the real layouts."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision import tv_tensors

from fcnseg.data import DataError, SBDDataset, VOCDataset, build_dataset, sbd_train_ids, seg11valid_ids
from fcnseg.data.palettes import voc_palette
from fcnseg.data.voc import VOC_INFO

H, W = 20, 30
IDS = ["2007_000032", "2007_000039", "2008_000002"]


def labels_for(index: int) -> np.ndarray:
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[:, W // 2 :] = 15 + index  # person (15), ...
    labels[0, :] = 255  # border
    return labels


def write_jpg(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), color).save(path, quality=100)


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels)
    image.putpalette([channel for color in voc_palette() for channel in color])  # "P", like VOC's PNGs
    image.save(path)


def make_voc(root: Path, ids=IDS, val_ids=IDS[:2]) -> Path:
    for index, image_id in enumerate(ids):
        write_jpg(root / "JPEGImages" / f"{image_id}.jpg", (10 * index, 100, 200))
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", labels_for(index))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("\n".join(ids) + "\n")
    (lists / "val.txt").write_text("\n".join(val_ids) + "\n")
    return root


def make_sbd(root: Path, ids=IDS, train_ids=IDS[1:]) -> Path:
    (root / "cls").mkdir(parents=True)
    for index, image_id in enumerate(ids):
        write_jpg(root / "img" / f"{image_id}.jpg", (50, 60, 70))
        gt = {"Segmentation": labels_for(index) % 255, "Boundaries": np.zeros((1, 20), dtype=object),
              "CategoriesPresent": np.array([[15]], dtype=np.uint8)}
        scipy.io.savemat(root / "cls" / f"{image_id}.mat", {"GTcls": gt})  # a MATLAB struct, as in SBD
    (root / "train.txt").write_text("\n".join(train_ids) + "\n")
    (root / "val.txt").write_text(IDS[0] + "\n")
    return root


def test_voc_returns_image_and_palette_indices(tmp_path):
    dataset = VOCDataset(make_voc(tmp_path / "VOC2011"), "train")
    assert len(dataset) == 3 and dataset.info.num_classes == 21 and dataset.info.ignore_index == 255
    image, mask = dataset[1]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (H, W)
    assert torch.allclose(image[:, 10, 5].float(), torch.tensor([10.0, 100.0, 200.0]), atol=3)
    assert mask[0, 0] == 255 and mask[5, 0] == 0 and mask[5, W - 1] == 16
    assert set(mask.unique().tolist()) == {0, 16, 255}


def test_voc_info_and_palette():
    assert VOC_INFO.class_names[0] == "background" and VOC_INFO.class_names[-1] == "tvmonitor"
    assert VOC_INFO.palette[1] == (128, 0, 0) and VOC_INFO.palette[15] == (192, 128, 128)
    assert voc_palette()[255] == (224, 224, 192)


def test_sbd_reads_gtcls_segmentation(tmp_path):
    dataset = build_dataset("sbd", root=make_sbd(tmp_path / "dataset"), split="train")
    assert len(dataset) == 2
    image, mask = dataset[1]  # IDS[2], labels_for(2) with the border row 0 (SBD has no 255)
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    assert mask[0, 0] == 0 and mask[5, W - 1] == 17 and mask[5, 0] == 0


def test_seg11valid_is_voc_val_minus_sbd_train(tmp_path):
    voc = make_voc(tmp_path / "VOC2011", val_ids=IDS)
    sbd = make_sbd(tmp_path / "sbd", train_ids=[IDS[1], "2011_999999"])
    assert seg11valid_ids(voc, sbd) == [IDS[0], IDS[2]]  # VOC order kept
    assert sbd_train_ids(sbd) == [IDS[1], "2011_999999"]
    dataset = VOCDataset(voc, "seg11valid", sbd_root=sbd)
    assert [sample[0].stem for sample in dataset.samples] == [IDS[0], IDS[2]]


def test_seg11valid_without_sbd_root_needs_a_list(tmp_path):
    voc = make_voc(tmp_path / "VOC2011")
    with pytest.raises(DataError, match="seg11valid.txt"):
        VOCDataset(voc, "seg11valid")
    (voc / "ImageSets" / "Segmentation" / "seg11valid.txt").write_text(IDS[2] + "\n")
    assert len(VOCDataset(voc, "seg11valid")) == 1


def corrupt_image(root: Path) -> str:
    path = root / "JPEGImages" / f"{IDS[0]}.jpg"
    path.write_bytes(b"not a jpeg at all")
    return str(path)


def wrong_size_mask(root: Path) -> str:
    path = root / "SegmentationClass" / f"{IDS[0]}.png"
    write_palette_png(path, np.zeros((H + 1, W), dtype=np.uint8))
    return str(path)


def bad_label(root: Path) -> str:
    path = root / "SegmentationClass" / f"{IDS[0]}.png"
    labels = labels_for(0)
    labels[3, 3] = 21
    write_palette_png(path, labels)
    return str(path)


@pytest.mark.parametrize("damage", [corrupt_image, wrong_size_mask, bad_label])
def test_voc_bad_sample_names_the_file(tmp_path, damage):
    root = make_voc(tmp_path / "VOC2011")
    path = damage(root)
    dataset = VOCDataset(root, "train")
    with pytest.raises(DataError) as error:
        dataset[0]
    assert path in str(error.value)


def test_voc_missing_and_empty_inputs_name_the_file(tmp_path):
    root = make_voc(tmp_path / "VOC2011")
    with pytest.raises(DataError, match="trainval.txt"):
        VOCDataset(root, "trainval")
    (root / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty split.*empty.txt"):
        VOCDataset(root, "empty")
    (root / "SegmentationClass" / f"{IDS[2]}.png").unlink()
    with pytest.raises(DataError, match=f"{IDS[2]}.png"):
        VOCDataset(root, "train")
    with pytest.raises(DataError, match="missing VOC root folder.*elsewhere"):
        VOCDataset(tmp_path / "elsewhere", "train")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="JPEGImages"):
        VOCDataset(tmp_path / "bare", "train")


def test_sbd_mat_without_gtcls_names_the_file(tmp_path):
    root = make_sbd(tmp_path / "dataset")
    path = root / "cls" / f"{IDS[1]}.mat"
    scipy.io.savemat(path, {"GTinst": np.zeros((2, 2))})
    with pytest.raises(DataError, match="GTcls") as error:
        SBDDataset(root, "train")[0]
    assert str(path) in str(error.value)

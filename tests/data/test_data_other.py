"""Cityscapes, SIFT Flow, NYUDv2, PASCAL-Context, the plain folder, the builders and colorize, on tiny files."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision import tv_tensors

from fcnseg.data import (
    DATASET_BUILDERS,
    DataError,
    FolderDataset,
    NYUDDataset,
    PascalContextDataset,
    SIFTFlowDataset,
    build_dataset,
    colorize,
    normalize_nyud,
)

H, W = 20, 30


def write_image(path: Path, array: np.ndarray, **save_args) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_args)


def rgb(value: int) -> np.ndarray:
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[..., 1] = value
    return image


# ---------------------------------------------------------------- Cityscapes


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    label_ids = np.zeros((H, W), dtype=np.uint8)  # 0 unlabeled
    label_ids[0, :8] = [7, 8, 11, 26, 33, 6, 31, 9]  # road, sidewalk, building, car, bicycle, ground, train, parking
    for city, stem in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        write_image(tmp_path / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png", rgb(7))
        write_image(tmp_path / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png", label_ids)
    dataset = build_dataset("cityscapes", root=tmp_path, split="train")
    assert len(dataset) == 2 and dataset.info.num_classes == 19
    image, mask = dataset[1]
    assert image.shape == (3, H, W) and image[1, 3, 3] == 7 and mask.dtype == torch.int64
    assert mask[0, :8].tolist() == [0, 1, 2, 13, 18, 255, 16, 255]
    assert mask[5, 5] == 255


def test_cityscapes_errors(tmp_path):
    stem = "aachen_000000_000019"
    write_image(tmp_path / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png", rgb(7))
    (tmp_path / "gtFine" / "val" / "aachen").mkdir(parents=True)
    with pytest.raises(DataError, match=f"{stem}_gtFine_labelIds.png"):
        build_dataset("cityscapes", root=tmp_path, split="val")
    path = tmp_path / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelIds.png"
    write_image(path, np.full((H, W), 255, dtype=np.uint8))  # a labelTrainIds image by mistake
    with pytest.raises(DataError, match="label id 255") as error:
        build_dataset("cityscapes", root=tmp_path, split="val")[0]
    assert str(path) in str(error.value)
    with pytest.raises(DataError, match="leftImg8bit/train"):
        build_dataset("cityscapes", root=tmp_path, split="train")


# ---------------------------------------------------------------- SIFT Flow

SUB = "spatial_envelope_256x256_static_8outdoorcategories"


def make_siftflow(root: Path) -> Path:
    semantic = np.full((H, W), 28, dtype=np.float64)  # sky (1-based 28)
    semantic[10:] = 22  # road
    semantic[0, 0] = 0  # unlabeled
    geometric = np.full((H, W), 1, dtype=np.int16)  # sky
    geometric[10:] = 2  # horizontal
    geometric[0, 1] = -1  # void
    for name in ("coast_n243003", "street_urb506"):
        write_image(root / "Images" / SUB / f"{name}.jpg", rgb(90), quality=100)
        (root / "SemanticLabels" / SUB).mkdir(parents=True, exist_ok=True)
        (root / "GeoLabels" / SUB).mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "SemanticLabels" / SUB / f"{name}.mat", {"S": semantic, "names": ["sky"]})
        scipy.io.savemat(root / "GeoLabels" / SUB / f"{name}.mat", {"S": geometric})
    (root / "trainval.txt").write_text("coast_n243003\nstreet_urb506\n")
    return root


def test_siftflow_two_label_maps_shifted_to_zero(tmp_path):
    dataset = build_dataset("siftflow", root=make_siftflow(tmp_path), split="trainval")
    assert isinstance(dataset, SIFTFlowDataset) and len(dataset) == 2
    assert dataset.info.num_classes == 33 and dataset.geometric_info.num_classes == 3
    image, (semantic, geometric) = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, H, W)
    assert isinstance(semantic, tv_tensors.Mask) and semantic.dtype == torch.int64 and semantic.shape == (H, W)
    assert semantic[0, 0] == 255 and semantic[1, 0] == 27 and semantic[15, 0] == 21
    assert dataset.info.class_names[27] == "sky" and dataset.info.class_names[21] == "road"
    assert geometric[0, 1] == 255 and geometric[0, 0] == 0 and geometric[15, 0] == 1
    with pytest.raises(DataError, match="test.txt"):
        SIFTFlowDataset(tmp_path, "test")


def test_siftflow_bad_geometric_label(tmp_path):
    root = make_siftflow(tmp_path)
    path = root / "GeoLabels" / SUB / "street_urb506.mat"
    scipy.io.savemat(path, {"S": np.full((H, W), 4)})
    with pytest.raises(DataError, match=r"\[3\]") as error:
        SIFTFlowDataset(root, "trainval")[1]
    assert str(path) in str(error.value)


# ---------------------------------------------------------------- NYUDv2


def make_nyud(root: Path) -> Path:
    labels = np.zeros((H, W), dtype=np.uint16)  # 0 void
    labels[5:, :] = 1  # wall
    labels[15:, 20:] = 40  # otherprop
    for image_id in ("5449", "6140"):
        write_image(root / "data" / "images" / f"img_{image_id}.png", rgb(120))
        write_image(root / "data" / "hha" / f"img_{image_id}.png", rgb(33))
        write_image(root / "data" / "depth" / f"img_{image_id}.png", np.full((H, W), 2500, dtype=np.uint16))
        (root / "segmentation").mkdir(exist_ok=True)
        scipy.io.savemat(root / "segmentation" / f"img_{image_id}.mat", {"segmentation": labels})
    (root / "train.txt").write_text("5449\n6140\n")
    return root


def test_nyud_modalities_and_label_shift(tmp_path):
    root = make_nyud(tmp_path)
    inputs, mask = build_dataset("nyud", root=root, split="train")[0]
    assert list(inputs) == ["color"] and inputs["color"].dtype == torch.uint8 and inputs["color"][1, 0, 0] == 120
    dataset = NYUDDataset(root, "train", modalities=("color", "depth", "hha"))
    inputs, mask = dataset[1]
    assert inputs["color"].shape == (3, H, W) and inputs["hha"].shape == (3, H, W) and inputs["hha"][1, 0, 0] == 33
    assert inputs["depth"].shape == (1, H, W) and inputs["depth"].dtype == torch.float32
    assert inputs["depth"][0, 3, 3] == 2500.0
    assert mask.dtype == torch.int64 and mask[0, 0] == 255 and mask[5, 0] == 0 and mask[19, 29] == 39
    normalized = normalize_nyud(inputs)
    assert normalized["depth"][0, 0, 0].item() == pytest.approx(np.log(2500.0) - 7.844, abs=1e-5)
    assert normalized["color"][1, 0, 0].item() == pytest.approx(120 - 97.203, abs=1e-4)  # G is G in BGR
    assert normalized["hha"][2, 0, 0].item() == pytest.approx(0 - 118.477, abs=1e-4)
    with pytest.raises(ValueError, match="modalities"):
        NYUDDataset(root, "train", modalities=("rgb",))


def test_nyud_size_mismatch_names_the_files(tmp_path):
    root = make_nyud(tmp_path)
    path = root / "data" / "hha" / "img_6140.png"
    write_image(path, np.zeros((H, W + 2, 3), dtype=np.uint8))
    assert NYUDDataset(root, "train")[1][1].shape == (H, W)  # colour only: the HHA file is not read
    with pytest.raises(DataError) as error:
        NYUDDataset(root, "train", modalities=("color", "hha"))[1]
    assert str(path) in str(error.value) and "img_6140.mat" in str(error.value)


# ---------------------------------------------------------------- PASCAL-Context


def test_pascal_context_maps_full_labels_to_59(tmp_path):
    labels_txt = "1: accordion\n2: aeroplane\n9: bag\n19: bedclothes\n80: cloth\n284: person\n397: table\n458: wood\n"
    voc = tmp_path / "VOC2010"
    write_image(voc / "JPEGImages" / "2008_000002.jpg", rgb(10), quality=100)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("2008_000002\n")
    full = np.zeros((H, W), dtype=np.uint16)
    full[0, :8] = [1, 2, 9, 19, 80, 284, 397, 458]
    full[1, 0] = 459  # a full label past those listed: background
    (tmp_path / "trainval").mkdir()
    scipy.io.savemat(tmp_path / "trainval" / "2008_000002.mat", {"LabelMap": full})
    (tmp_path / "labels.txt").write_text(labels_txt)
    with pytest.raises(DataError, match="labels.txt has no class 'bicycle'"):
        PascalContextDataset(tmp_path, "train")
    names = [line.split(": ")[1] for line in labels_txt.splitlines()]
    from fcnseg.data.pascal_context import CONTEXT_CLASSES, FULL_LABEL_NAMES

    extra = [FULL_LABEL_NAMES.get(n, n) for n in CONTEXT_CLASSES[1:] if FULL_LABEL_NAMES.get(n, n) not in names]
    (tmp_path / "labels.txt").write_text(labels_txt + "".join(f"{500 + i}: {n}\n" for i, n in enumerate(extra)))
    dataset = build_dataset("pascal-context", root=tmp_path, split="train")
    assert dataset.info.num_classes == 60 and dataset.info.class_names[0] == "background"
    image, mask = dataset[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    # accordion -> background, aeroplane 1, bag 21, bedclothes -> bedcloth 52, cloth -> clothes 28, person 15,
    # table -> diningtable 11, wood 59
    assert mask[0, :8].tolist() == [0, 1, 21, 52, 28, 15, 11, 59]
    assert mask[1, 0] == 0 and mask[5, 5] == 0


# ---------------------------------------------------------------- plain folder


def make_folder(root: Path) -> Path:
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[:, 10:] = 2
    labels[0, 0] = 255
    for stem, suffix in (("a", ".jpg"), ("b", ".png"), ("c", ".bmp")):
        write_image(root / "images" / f"{stem}{suffix}", rgb(200))
        write_image(root / "masks" / f"{stem}.png", labels)
    (root / "classes.txt").write_text("ground\nsky\nroof\n")
    (root / "train.txt").write_text("c\na\n")
    return root


def test_folder_split_classes_and_labels(tmp_path):
    root = make_folder(tmp_path)
    dataset = build_dataset("folder", root=root, split="train")
    assert dataset.info.class_names == ("ground", "sky", "roof") and len(dataset.info.palette) == 3
    assert [sample[0].name for sample in dataset.samples] == ["c.bmp", "a.jpg"]
    image, mask = dataset[0]
    assert image.shape == (3, H, W) and image[1, 4, 4] == 200
    assert mask[0, 0] == 255 and mask[1, 0] == 0 and mask[1, 10] == 2
    assert len(FolderDataset(root, "all")) == 3


def test_folder_errors(tmp_path):
    root = make_folder(tmp_path)
    with pytest.raises(DataError, match="val.txt"):
        FolderDataset(root, "val")
    (root / "masks" / "b.png").unlink()
    with pytest.raises(DataError, match="b.png"):
        FolderDataset(root, "all")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        FolderDataset(root, "train")
    dataset = FolderDataset(root, "train", num_classes=2)
    with pytest.raises(DataError, match=r"\[2\]") as error:
        dataset[0]
    assert str(root / "masks" / "c.png") in str(error.value)


# ---------------------------------------------------------------- builders and colorize


def test_builders_cover_every_dataset():
    assert set(DATASET_BUILDERS) == {"voc", "sbd", "camvid", "cityscapes", "siftflow", "nyud", "pascal-context",
                                     "folder"}
    with pytest.raises(ValueError, match="unknown dataset 'coco'.*camvid"):
        build_dataset("coco", root=".", split="train")


def test_colorize_uses_the_palette():
    mask = torch.tensor([[0, 1], [2, 255]])
    image = colorize(mask, ((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    assert image.mode == "P" and image.size == (2, 2)
    colors = np.array(image.convert("RGB"))
    assert colors[0, 1].tolist() == [4, 5, 6] and colors[1, 0].tolist() == [7, 8, 9]
    assert colors[1, 1].tolist() == [255, 255, 255]

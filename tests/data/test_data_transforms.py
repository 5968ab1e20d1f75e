"""Joint transforms: masks never interpolated, crop padding, consistent flips, and the two normalizations."""

import pytest
import torch
from torchvision import tv_tensors

from fcnseg.data.nyud import normalize_nyud
from fcnseg.data.transforms import (
    RandomScale,
    denormalize,
    eval_transforms,
    normalize,
    train_transforms,
)

H, W = 20, 30


def column_pattern() -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Image red = 8 * column, mask = column: a pattern whose left and right differ."""
    columns = torch.arange(W).expand(H, W)
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    image[0] = (8 * columns).to(torch.uint8)
    image[2] = 17
    return tv_tensors.Image(image), tv_tensors.Mask(columns.clone())


def test_random_scale_keeps_mask_values():
    torch.manual_seed(0)
    mask = tv_tensors.Mask(torch.tensor([0, 3, 7, 255])[torch.randint(0, 4, (H, W))])
    image = tv_tensors.Image(torch.randint(0, 256, (3, H, W), dtype=torch.uint8))
    transform = train_transforms(crop_size=None, scale_range=(0.5, 2.0), normalization="imagenet")
    sizes = set()
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        assert out_mask.dtype == torch.int64 and out_image.dtype == torch.float32
        assert out_image.shape[-2:] == out_mask.shape
        assert set(out_mask.unique().tolist()) <= {0, 3, 7, 255}
        sizes.add(tuple(out_mask.shape))
        assert 10 <= out_mask.shape[0] <= 40 and 15 <= out_mask.shape[1] <= 60
    assert len(sizes) > 5


def test_random_scale_resizes_image_and_mask_alike():
    torch.manual_seed(1)
    image, mask = column_pattern()
    out_image, out_mask = RandomScale((2.0, 2.0))(image, mask)
    assert out_image.shape == (3, 2 * H, 2 * W) and out_mask.shape == (2 * H, 2 * W)
    assert out_mask[:, 0].eq(0).all() and out_mask[:, -1].eq(W - 1).all()  # nearest: columns duplicated
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((0.0, 1.0))


def test_crop_pads_mask_with_ignore_and_image_with_zero():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.full((3, H, W), 50, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(H, W, dtype=torch.int64))
    transform = train_transforms(crop_size=40, scale_range=None, hflip=False, normalization="caffe")
    out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, 40, 40) and out_mask.shape == (40, 40)
    assert set(out_mask.unique().tolist()) == {1, 255}
    assert (out_mask == 1).sum() == H * W  # the whole image, nothing lost or invented
    padded = out_mask == 255
    expected_pad = -torch.tensor([104.00699, 116.66877, 122.67892])  # a 0 pixel minus the BGR mean
    assert torch.allclose(out_image[:, padded].T, expected_pad.expand(int(padded.sum()), 3))
    assert torch.allclose(out_image[:, out_mask == 1], torch.tensor([[50 - 104.00699], [50 - 116.66877],
                                                                     [50 - 122.67892]]))


def test_crop_smaller_than_image_with_custom_ignore():
    image, mask = column_pattern()
    transform = train_transforms(crop_size=16, scale_range=None, hflip=False, normalization="caffe",
                                 ignore_index=99)
    out_image, out_mask = transform(image, mask)
    assert out_mask.shape == (16, 16) and 99 not in out_mask.unique().tolist()
    first = int(out_mask[0, 0])
    assert out_mask[0].tolist() == list(range(first, first + 16))


def test_flip_moves_image_and_mask_together():
    image, mask = column_pattern()
    transform = train_transforms(crop_size=None, scale_range=None, hflip=True, normalization="caffe")
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        red = denormalize(out_image, "caffe")[0].to(torch.int64)
        assert torch.equal(red, 8 * out_mask)  # image and mask still agree pixel by pixel
        seen.add(int(out_mask[0, 0]))
    assert seen == {0, W - 1}  # both flipped and unflipped samples occurred


def test_color_jitter_touches_the_image_only():
    torch.manual_seed(0)
    image, mask = column_pattern()
    transform = train_transforms(crop_size=None, scale_range=None, hflip=False, color_jitter=0.5,
                                 normalization="imagenet")
    out_image, out_mask = transform(image, mask)
    assert torch.equal(out_mask, mask.as_subclass(torch.Tensor))
    assert not torch.allclose(out_image, normalize(image, "imagenet"))


def test_hue_jitter_rotates_hue_only():
    # A hue rotation keeps each pixel's largest and smallest channel (HSV value and chroma) and leaves grey alone.
    torch.manual_seed(0)
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    image[:, :2] = torch.tensor([200, 60, 30], dtype=torch.uint8)[:, None, None]  # orange rows
    image[:, 2:] = 128  # grey rows
    mask = torch.zeros(4, 4, dtype=torch.int64)
    transform = train_transforms(crop_size=None, scale_range=None, hflip=False, hue_jitter=0.5,
                                 normalization="imagenet")
    changed = 0
    for _ in range(5):
        out = denormalize(transform(image, mask)[0], "imagenet").to(torch.int64)
        assert torch.equal(out[:, 2:], image[:, 2:].to(torch.int64))
        coloured = out[:, :2].reshape(3, -1)
        assert (coloured.amax(0) - 200).abs().max() <= 1 and (coloured.amin(0) - 30).abs().max() <= 1
        changed += not torch.equal(out[:, :2], image[:, :2].to(torch.int64))
    assert changed >= 4  # a uniform shift in [-0.5, 0.5] of a turn almost never rounds back to the same colour


@pytest.mark.parametrize("hue", [-0.1, 0.6])
def test_hue_jitter_out_of_range_is_refused(hue):
    with pytest.raises(ValueError, match="hue_jitter"):
        train_transforms(crop_size=None, hue_jitter=hue, normalization="imagenet")


def test_caffe_normalization_matches_hand_computation():
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    image[:, 1, 0] = torch.tensor([10, 20, 30], dtype=torch.uint8)  # R, G, B
    out = normalize(image, "caffe")
    assert out.dtype == torch.float32 and out.shape == (3, 2, 2)
    # BGR order: B - 104.00699, G - 116.66877, R - 122.67892
    assert out[:, 1, 0].tolist() == pytest.approx([30 - 104.00699, 20 - 116.66877, 10 - 122.67892], abs=1e-4)


def test_imagenet_normalization_matches_hand_computation():
    image = torch.zeros(3, 1, 1, dtype=torch.uint8)
    image[:, 0, 0] = torch.tensor([10, 20, 30], dtype=torch.uint8)
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    assert normalize(image, "imagenet")[:, 0, 0].tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("normalization", ["caffe", "imagenet", "caffe-siftflow", "caffe-nyud"])
def test_denormalize_inverts_normalize(normalization):
    image = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)  # a batch works too
    assert torch.equal(denormalize(normalize(image, normalization), normalization), image)


def test_eval_transforms_only_normalize():
    image, mask = column_pattern()
    out_image, out_mask = eval_transforms(normalization="caffe")(image, mask)
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    assert torch.equal(out_image, normalize(image, "caffe")) and torch.equal(out_mask, mask.as_subclass(torch.Tensor))
    with pytest.raises(ValueError, match="unknown normalization 'bgr'"):
        eval_transforms(normalization="bgr")


def test_tuple_targets_and_dict_inputs():
    torch.manual_seed(3)
    image, mask = column_pattern()
    transform = train_transforms(crop_size=12, scale_range=(0.7, 1.5), normalization="caffe")
    out_image, (semantic, geometric) = transform(image, (mask, tv_tensors.Mask(mask // 10)))
    assert out_image.shape == (3, 12, 12) and semantic.shape == geometric.shape == (12, 12)
    valid = semantic != 255
    assert torch.equal(geometric[valid], semantic[valid] // 10)

    depth = tv_tensors.Image(torch.full((1, H, W), 1000.0))
    transform = train_transforms(crop_size=24, scale_range=None, color_jitter=0.3, normalization=normalize_nyud)
    inputs, out_mask = transform({"color": image, "depth": depth}, mask)
    assert inputs["color"].shape == (3, 24, 24) and inputs["depth"].shape == (1, 24, 24)
    assert out_mask.shape == (24, 24) and (out_mask == 255).any()

"""The paper's Figure 2: a convolutionalized ImageNet classifier emits a class-score heatmap.

The EfficientNet-Lite classifier ends in global average pooling and one fully connected layer. Pooling
and a linear layer commute, so turning the linear layer into a 1x1 convolution over the stride-32
features gives a map of class scores whose spatial mean is exactly the classifier's logits; each cell
scores the image region it sees. The map is upsampled bilinearly to the image's full size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fcnseg.data.base import read_image
from fcnseg.data.transforms import normalize
from fcnseg.models.efficientnet_lite import EfficientNetLite, load_pretrained_lite
from fcnseg.outputs import require_writable_file


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names (shipped with torchvision, no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def class_score_map(classifier: EfficientNetLite, x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` normalized images -> ``(N, 1000, ceil(H/32), ceil(W/32))`` class scores."""
    _, _, features = classifier.forward_features(x)  # (N, 1280, h, w)
    fc = classifier._fc
    return F.conv2d(features, fc.weight[:, :, None, None], fc.bias)  # the linear layer as a 1x1 convolution


def find_class(name: str, categories: list[str]) -> int:
    """Index of the category named ``name`` (exact, else a unique case-insensitive substring)."""
    lowered = [c.lower() for c in categories]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    matches = [i for i, c in enumerate(lowered) if name.lower() in c]
    if len(matches) != 1:
        shown = ", ".join(categories[i] for i in matches[:8]) or "none"
        raise ValueError(f"class {name!r} matches {len(matches)} ImageNet classes ({shown}); be more specific")
    return matches[0]


@torch.inference_mode()
def heatmap(
    classifier: EfficientNetLite, image: torch.Tensor, *, class_index: int | None = None, normalization: str = "lite"
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """``(3, H, W)`` uint8 image -> ``(heat (H, W), class_index, logits (1000,))``.

    ``heat`` holds the chosen class's score at every pixel; the class defaults to the top-1 prediction.
    """
    classifier.eval()
    height, width = image.shape[-2:]
    scores = class_score_map(classifier, normalize(image, normalization).unsqueeze(0))[0]  # (1000, h, w)
    logits = scores.mean(dim=(-2, -1))
    if class_index is None:
        class_index = int(logits.argmax())
    cells = scores[class_index][None, None]  # (1, 1, h, w)
    # Cell i is centred near pixel 32 i + 15.5: interpolate over the padded grid, then crop to the image.
    grid = F.interpolate(cells, size=(32 * cells.shape[-2], 32 * cells.shape[-1]), mode="bilinear", align_corners=False)
    return grid[0, 0, :height, :width], class_index, logits


def overlay_heatmap(image: torch.Tensor, heat: torch.Tensor, *, alpha: float = 0.5) -> Image.Image:
    """The photo with the heatmap (min-max scaled, 'jet' colours) blended over it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps

    scaled = (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-8)
    colours = (colormaps["jet"](scaled.numpy())[..., :3] * 255).astype(np.uint8)
    photo = Image.fromarray(image.permute(1, 2, 0).numpy())
    return Image.blend(photo, Image.fromarray(colours), alpha)


def heatmap_file(
    image_path: str | Path, out_path: str | Path, *, class_name: str | None = None, variant: str = "lite0"
) -> dict:
    """Write the overlay for one image; returns the class shown and the top-5 predictions.

    The image, the class name and ``out_path`` (``OutputError`` when it cannot be written) are checked before
    the classifier runs.
    """
    require_writable_file(out_path)
    image = read_image(Path(image_path))
    categories = imagenet_categories()
    class_index = find_class(class_name, categories) if class_name else None
    classifier = load_pretrained_lite(variant)
    heat, class_index, logits = heatmap(classifier, image, class_index=class_index)
    overlay_heatmap(image, heat).save(out_path)
    top5 = logits.softmax(0).topk(5)
    return {
        "class": categories[class_index],
        "class_index": class_index,
        "top5": [(categories[int(i)], float(p)) for p, i in zip(top5.values, top5.indices)],
        "out": str(out_path),
    }

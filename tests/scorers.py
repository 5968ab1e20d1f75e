"""A small untrained model that predicts every class of the shapes data set somewhere, for tests of the code around
models (predict, quantize, distributed evaluation), and the checkpoint meta that goes with it."""

import torch
from shapes_data import CLASSES

from fcnseg.checkpoint import ModelMeta
from fcnseg.models.registry import build_model

SHAPES_META = ModelMeta(model="fcn8s-lite0", num_classes=3, class_names=CLASSES,
                        palette=((0, 0, 0), (200, 30, 30), (30, 30, 200)), normalization="lite")


def random_scorer() -> torch.nn.Module:
    """An untrained fcn8s-lite0 whose stride-8 scores are random: it predicts all three classes, here and there."""
    torch.manual_seed(2)
    model = build_model("fcn8s-lite0", num_classes=3)
    torch.nn.init.normal_(model.score_pool3.weight, std=0.1)
    return model

"""FCN models, as the paper describes them and nothing else (no data, training or inference code).

Every single-task model maps ``(N, C, H, W)`` images to ``(N, num_classes, H, W)`` logits; the SIFT Flow models
return a named tuple of two. ``MODEL_SPECS`` (``registry.py``) holds one ``ModelSpec`` per name.
Trained weights: ``get_weights``, ``list_weights`` and ``Weights`` are ``fcnseg.weights``'s, re-exported here.
"""

from fcnseg.models.alexnet import FCNAlexNet
from fcnseg.models.backbone_fcn import BackboneFCN
from fcnseg.models.backbones import LiteBackbone, ResNetBackbone, VGG16Backbone, build_backbone
from fcnseg.models.efficientnet_lite import EfficientNetLite, load_pretrained_lite
from fcnseg.models.interface import CoarseScoring, ConvBatchNormPairs, ConvReLUPairs
from fcnseg.models.layers import BilinearUpsample, bilinear_kernel, crop_like, upsampling_layers
from fcnseg.models.registry import MODEL_SPECS, ModelSpec, build_model, list_models, model_spec
from fcnseg.models.transplant import copy_shared_layers, transplant_alexnet, transplant_vgg16
from fcnseg.models.vgg import VGG16FCN, FCN8s, FCN8sAtOnce, FCN16s, FCN32s

__all__ = [
    "FCN32s",
    "FCN16s",
    "FCN8s",
    "FCN8sAtOnce",
    "FCNAlexNet",
    "BackboneFCN",
    "EfficientNetLite",
    "LiteBackbone",
    "ResNetBackbone",
    "VGG16Backbone",
    "build_backbone",
    "load_pretrained_lite",
    "VGG16FCN",
    "BilinearUpsample",
    "bilinear_kernel",
    "crop_like",
    "upsampling_layers",
    "CoarseScoring",
    "ConvBatchNormPairs",
    "ConvReLUPairs",
    "copy_shared_layers",
    "transplant_vgg16",
    "transplant_alexnet",
    "MODEL_SPECS",
    "ModelSpec",
    "build_model",
    "list_models",
    "model_spec",
    "Weights",
    "get_weights",
    "list_weights",
]

WEIGHTS_API = ("Weights", "get_weights", "list_weights")  # defined in fcnseg.weights


def __getattr__(name: str):
    # fcnseg.models.get_weights (list_weights, Weights) is fcnseg.weights's, imported on first use: fcnseg.weights
    # reads files through fcnseg.checkpoint, which imports fcnseg.models.registry, so importing it here at import
    # time would make a cycle (and make fcnseg.models import the data code).
    if name in WEIGHTS_API:
        import fcnseg.weights

        return getattr(fcnseg.weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""FCN models. Every model maps ``(N, C, H, W)`` images to ``(N, num_classes, H, W)`` logits."""

from fcnseg.models.alexnet import FCNAlexNet
from fcnseg.models.backbones import LiteBackbone, ResNetBackbone, VGG16Backbone, build_backbone
from fcnseg.models.efficientnet_lite import EfficientNetLite, load_pretrained_lite
from fcnseg.models.heads import BackboneFCN
from fcnseg.models.layers import BilinearUpsample, bilinear_kernel, crop_like
from fcnseg.models.pretrained import transplant_alexnet, transplant_vgg16
from fcnseg.models.vgg import FCN8s, FCN8sAtOnce, FCN16s, FCN32s, VGG16FCN
from fcnseg.models.zoo import MODEL_BUILDERS, build_model

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
    "transplant_vgg16",
    "transplant_alexnet",
    "MODEL_BUILDERS",
    "build_model",
]

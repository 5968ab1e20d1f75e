"""FCN models. Every model maps ``(N, C, H, W)`` images to ``(N, num_classes, H, W)`` logits."""

from fcnseg.models.alexnet import FCNAlexNet
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
    "VGG16FCN",
    "BilinearUpsample",
    "bilinear_kernel",
    "crop_like",
    "transplant_vgg16",
    "transplant_alexnet",
    "MODEL_BUILDERS",
    "build_model",
]

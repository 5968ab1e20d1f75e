"""fcnseg: Fully Convolutional Networks for Semantic Segmentation (Long, Shelhamer, Darrell) in PyTorch."""

from fcnseg.convolutionalize import convolutionalize
from fcnseg.inference import inference_model
from fcnseg.metrics import ConfusionMatrix
from fcnseg.models import FCN8s, FCN8sAtOnce, FCN16s, FCN32s, FCNAlexNet, build_model

__version__ = "0.1.0"

__all__ = [
    "ConfusionMatrix",
    "FCN32s",
    "FCN16s",
    "FCN8s",
    "FCN8sAtOnce",
    "FCNAlexNet",
    "build_model",
    "convolutionalize",
    "inference_model",
    "__version__",
]

"""Import the reference's Caffe weights (``.caffemodel``) without Caffe or protoc."""

from fcnseg.caffe.convert import (
    caffe_to_state_dict,
    convert_caffemodel,
    infer_num_classes,
    read_caffemodel,
    unmatched_layers,
    weight_layers,
)

__all__ = [
    "caffe_to_state_dict",
    "convert_caffemodel",
    "infer_num_classes",
    "read_caffemodel",
    "unmatched_layers",
    "weight_layers",
]

"""The subset of Caffe's ``caffe.proto`` (package ``caffe``, proto2) needed to read ``.caffemodel`` weights.

A ``.caffemodel`` is a binary ``NetParameter``. Rather than ship protoc-generated code, the few
messages that carry weights are described here in Python, with BVLC caffe.proto's own field
numbers, and their classes are built at import from a private descriptor pool (so they never
clash with another copy of caffe.proto loaded in the same process). Every other field of a real
file (``convolution_param``, ``phase``, ``include``, ...) is unknown to this schema and skipped by
the parser.

    BlobShape         { repeated int64 dim = 1 [packed] }
    BlobProto         { num = 1, channels = 2, height = 3, width = 4 (legacy 4-D shape, int32);
                        repeated float data = 5, diff = 6 [packed]; optional BlobShape shape = 7;
                        repeated double double_data = 8, double_diff = 9 [packed] }
    LayerParameter    { name = 1, type = 2 (string); repeated bottom = 3, top = 4; repeated BlobProto blobs = 7 }
    V1LayerParameter  { bottom = 2, top = 3 (repeated); name = 4; type = 5 (an enum in Caffe, read as int32);
                        repeated BlobProto blobs = 6 }
    NetParameter      { name = 1; repeated V1LayerParameter layers = 2 (legacy); repeated LayerParameter layer = 100 }
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto
PACKAGE = "caffe"

# (name, number, label, type, message type name or None, packed)
_Field = tuple[str, int, int, int, str | None, bool]

_OPTIONAL, _REPEATED = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
_INT32, _INT64, _FLOAT, _DOUBLE = _FIELD.TYPE_INT32, _FIELD.TYPE_INT64, _FIELD.TYPE_FLOAT, _FIELD.TYPE_DOUBLE
_STRING, _MESSAGE = _FIELD.TYPE_STRING, _FIELD.TYPE_MESSAGE

CAFFE_MESSAGES: dict[str, list[_Field]] = {
    "BlobShape": [
        ("dim", 1, _REPEATED, _INT64, None, True),
    ],
    "BlobProto": [
        ("shape", 7, _OPTIONAL, _MESSAGE, "BlobShape", False),
        ("data", 5, _REPEATED, _FLOAT, None, True),
        ("diff", 6, _REPEATED, _FLOAT, None, True),
        ("double_data", 8, _REPEATED, _DOUBLE, None, True),
        ("double_diff", 9, _REPEATED, _DOUBLE, None, True),
        ("num", 1, _OPTIONAL, _INT32, None, False),
        ("channels", 2, _OPTIONAL, _INT32, None, False),
        ("height", 3, _OPTIONAL, _INT32, None, False),
        ("width", 4, _OPTIONAL, _INT32, None, False),
    ],
    "LayerParameter": [
        ("name", 1, _OPTIONAL, _STRING, None, False),
        ("type", 2, _OPTIONAL, _STRING, None, False),
        ("bottom", 3, _REPEATED, _STRING, None, False),
        ("top", 4, _REPEATED, _STRING, None, False),
        ("blobs", 7, _REPEATED, _MESSAGE, "BlobProto", False),
    ],
    "V1LayerParameter": [
        ("bottom", 2, _REPEATED, _STRING, None, False),
        ("top", 3, _REPEATED, _STRING, None, False),
        ("name", 4, _OPTIONAL, _STRING, None, False),
        ("type", 5, _OPTIONAL, _INT32, None, False),
        ("blobs", 6, _REPEATED, _MESSAGE, "BlobProto", False),
    ],
    "NetParameter": [
        ("name", 1, _OPTIONAL, _STRING, None, False),
        ("layer", 100, _REPEATED, _MESSAGE, "LayerParameter", False),
        ("layers", 2, _REPEATED, _MESSAGE, "V1LayerParameter", False),
    ],
}

# V1LayerParameter.LayerType values of the layers that carry weights in an FCN.
V1_CONVOLUTION = 4
V1_DECONVOLUTION = 39
V1_INNER_PRODUCT = 14


def caffe_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The schema above as a ``FileDescriptorProto`` (what protoc would produce for it)."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="fcnseg/caffe/caffe_subset.proto", package=PACKAGE, syntax="proto2"
    )
    for message_name, fields in CAFFE_MESSAGES.items():
        message = file_proto.message_type.add(name=message_name)
        for name, number, label, field_type, type_name, packed in fields:
            field = message.field.add(name=name, number=number, label=label, type=field_type)
            if type_name is not None:
                field.type_name = f".{PACKAGE}.{type_name}"
            if packed:
                field.options.packed = True
    return file_proto


def _build_classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(caffe_file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in CAFFE_MESSAGES
    }


_CLASSES = _build_classes()
BlobShape = _CLASSES["BlobShape"]
BlobProto = _CLASSES["BlobProto"]
LayerParameter = _CLASSES["LayerParameter"]
V1LayerParameter = _CLASSES["V1LayerParameter"]
NetParameter = _CLASSES["NetParameter"]

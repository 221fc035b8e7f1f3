"""The MindIR protobuf as the rewrite sees it: reading and writing a model file, the reference from a
CNode to its primitive, attribute encoding and the Python values of Constant nodes."""
from mindspore.train import mind_ir_pb2

from ...io import atomic_write
from .errors import CompatError

AttributeProto = mind_ir_pb2.AttributeProto
ModelProto = mind_ir_pb2.ModelProto
NodeProto = mind_ir_pb2.NodeProto
PrimitiveProto = mind_ir_pb2.PrimitiveProto
TensorProto = mind_ir_pb2.TensorProto

# A CNode's op_type is "REF::" + the name of its PrimitiveProto; Constant nodes have op_type "Constant".
PRIMITIVE_REF = "REF::"


def is_primitive_call(node):
    return node.op_type.startswith(PRIMITIVE_REF)


def primitive_name(node):
    """The name of the primitive a CNode refers to (its op_type without "REF::")."""
    return node.op_type[len(PRIMITIVE_REF):]


def primitive_ref(primitive):
    """The op_type of a CNode that calls ``primitive``."""
    return PRIMITIVE_REF + primitive.name


def read_model(path):
    model = ModelProto()
    try:
        with open(path, "rb") as f:
            model.ParseFromString(f.read())
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise CompatError(f"cannot read MindIR {path}: {type(e).__name__}") from None
    return model


def write_model(model, path):
    """Write ``model`` to ``path`` whole or not at all."""
    with atomic_write(path, suffix=".mindir") as tmp, open(tmp, "wb") as f:
        f.write(model.SerializeToString())


def encode_attribute(name, value):
    """An AttributeProto for a bool, int, float, str, or a tuple/list of bools, ints and floats."""
    attr = AttributeProto(name=name)
    if isinstance(value, bool):
        attr.type, attr.i = AttributeProto.BOOL, int(value)
    elif isinstance(value, int):
        attr.type, attr.i = AttributeProto.INT64, value
    elif isinstance(value, float):
        attr.type, attr.f = AttributeProto.FLOAT, value
    elif isinstance(value, str):
        attr.type, attr.s = AttributeProto.STRING, value.encode()
    elif isinstance(value, (tuple, list)):
        attr.type = AttributeProto.TUPLE if isinstance(value, tuple) else AttributeProto.LIST
        for item in value:
            element = attr.values.add()
            # sequence elements keep ints and floats in the repeated fields, not in i and f
            if isinstance(item, bool):
                element.type, element.i = AttributeProto.BOOL, int(item)
            elif isinstance(item, int):
                element.type = AttributeProto.INT64
                element.ints.append(item)
            elif isinstance(item, float):
                element.type = AttributeProto.FLOAT
                element.floats.append(item)
            else:
                raise CompatError(f"cannot encode attribute {name}={value!r}")
    else:
        raise CompatError(f"cannot encode attribute {name}={value!r}")
    return attr


_INTEGER_TYPES = (AttributeProto.INT64, AttributeProto.INT32, AttributeProto.INT8, AttributeProto.INT16,
                  AttributeProto.UINT8)


def constant_value(node):
    """The Python value of a Constant node: None, bool, int, float or a tuple of ints and floats;
    any other attribute (a tensor, ...) is returned as the AttributeProto itself."""
    attr = node.attribute[0]
    if attr.type == AttributeProto.NONE:
        return None
    if attr.type == AttributeProto.BOOL:
        return bool(attr.i)
    if attr.type in _INTEGER_TYPES:
        return int(attr.i)
    if attr.type == AttributeProto.FLOAT:
        return float(attr.f)
    if attr.type == AttributeProto.DOUBLE:
        return float(attr.d)
    if attr.type in (AttributeProto.TUPLE, AttributeProto.LIST):
        items = []
        for element in attr.values:
            if element.ints:
                items.append(int(element.ints[0]))
            elif element.type in (AttributeProto.INT64, AttributeProto.INT32, AttributeProto.BOOL):
                items.append(int(element.i))
            elif element.floats:
                items.append(float(element.floats[0]))
            elif element.type == AttributeProto.FLOAT:
                items.append(float(element.f))
            else:
                raise CompatError(f"unsupported tuple element in constant {node.name}: {element}")
        return tuple(items)
    return attr


def tensor_dims(attr):
    """The dims of the first tensor of a TENSORS attribute."""
    return [int(d) for d in attr.tensors[0].dims]


def recorded_shape(node):
    """The output shape 2.10 recorded in a CNode's "shape" attribute (-1 for a dynamic dim), or None."""
    for attr in node.attribute:
        if attr.name == "shape" and attr.type == AttributeProto.TENSORS:
            return tensor_dims(attr)
    return None

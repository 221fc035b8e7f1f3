"""Shape inference at a given batch size.

2.10 loses static dims after a shape computed in the graph (the recorded abstracts say -1), so the
rewrite infers every value itself, once with batch 1 and once with batch 2: a dim that differs
between the two runs follows the batch (-1 in Lite), any other dim is static.

A value is a :class:`TensorValue` (a tensor's shape), a Python value (constants and the scalar and
tuple arithmetic on shapes), a list (a tuple of tensors) or None (not known).
"""
import math

from .errors import CompatError
from .proto import AttributeProto, constant_value, primitive_name, tensor_dims


class TensorValue:
    """A tensor in the inference: only its shape is tracked."""
    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = [int(d) for d in shape]


def merge_batch(shape1, shape2):
    """The shapes (or int tuples) at batch 1 and 2 as one, with -1 where they differ."""
    return [a if a == b else -1 for a, b in zip(shape1, shape2)]


def broadcast_shapes(a, b):
    rank = max(len(a), len(b))
    a = [1] * (rank - len(a)) + list(a)
    b = [1] * (rank - len(b)) + list(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            raise CompatError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return out


def reduced_shape(shape, axes, keep_dims):
    """The shape of a reduction over ``axes`` (an int, a sequence, or None/() for all axes)."""
    if axes is None or axes == ():
        axes = tuple(range(len(shape)))
    axes = axes if isinstance(axes, (tuple, list)) else (axes,)
    axes = [a + len(shape) if a < 0 else a for a in axes]
    return [1 if i in axes else d for i, d in enumerate(shape) if keep_dims or i not in axes]


def reshaped(shape, target):
    """The shape ``target`` means for a tensor of ``shape``: 0 copies the input dim, -1 takes the rest."""
    target = list(target)
    count = math.prod(shape)
    for i, d in enumerate(target):
        if d == 0:
            target[i] = shape[i]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = count // known
    return target


def strided_slice_shape(shape, begin, end, strides, begin_mask, end_mask, shrink_axis_mask):
    out = []
    for i, d in enumerate(shape):
        if i >= len(begin):
            out.append(d)
            continue
        start = None if (begin_mask >> i) & 1 else begin[i]
        stop = None if (end_mask >> i) & 1 else end[i]
        if (shrink_axis_mask >> i) & 1:
            continue
        out.append(len(range(*slice(start, stop, strides[i]).indices(d))))
    return out


def conv2d_shape(x_shape, primitive):
    """The output shape of a Conv2D primitive (NCHW) on an input of ``x_shape``."""
    attrs = {a.name: a for a in primitive.attribute}

    def ints(name):
        return [int(v.ints[0]) if v.ints else int(v.i) for v in attrs[name].values]
    kernel = ints("kernel_size")
    stride = ints("stride")[-2:]
    dilation = ints("dilation")[-2:]
    pad_mode = attrs["pad_mode"]
    mode = pad_mode.s.decode() if pad_mode.type == AttributeProto.STRING else int(pad_mode.i)
    pads = ints("pad_list") if "pad_list" in attrs else ints("pad")
    n, _, h, w = x_shape
    out = []
    for i, d in enumerate((h, w)):
        if mode in ("same", 1):
            out.append(-(-d // stride[i]))
        else:
            padding = (pads[2 * i] + pads[2 * i + 1]) if mode in ("pad", 0) else 0
            out.append((d + padding - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1)
    return [n, int(attrs["out_channel"].i)] + out


def infer_values(ctx, batch):
    """{value name: value} for every value in the graph of ``ctx`` (a GraphContext) at this batch."""
    values = {}
    for name, param in ctx.parameters.items():
        values[name] = TensorValue(param.dims)
    for name, graph_input in ctx.graph_inputs.items():
        values[name] = TensorValue([batch if d < 0 else d for d in graph_input.tensor[0].dims])
    for node in ctx.model.graph.node:
        out = node.output[0]
        if node.op_type == "Constant":
            attr = node.attribute[0]
            values[out] = TensorValue(tensor_dims(attr)) if attr.type == AttributeProto.TENSORS \
                else constant_value(node)
            continue
        op, inputs = ctx.original[node.name]
        try:
            values[out] = infer_op(op, [values.get(i) for i in inputs], node, ctx.primitives)
        except (CompatError, TypeError, KeyError, IndexError, AttributeError, ValueError, ZeroDivisionError):
            values[out] = None  # unknown: rules that need it fall back to the recorded abstract
    return values


# the ops of the rewrite's table whose output has the shape of their first input
SAME_SHAPE = {"BiasAdd", "ReLU", "Sigmoid", "Softmax", "GeLU", "Muls", "Divs", "Rsqrt", "Erf"}


def infer_op(op, inputs, node, primitives):
    """The value of ``node`` (of type ``op``) from the values of its inputs."""
    shapes = [v.shape if isinstance(v, TensorValue) else None for v in inputs]
    if op in SAME_SHAPE:
        return TensorValue(shapes[0])
    if op in ("Load", "Depend"):
        return inputs[0]
    if op == "UpdateState":
        return None
    if op in ("Add", "Sub", "Mul", "Div", "RealDiv"):
        return TensorValue(broadcast_shapes(shapes[0] if shapes[0] is not None else [],
                                            shapes[1] if shapes[1] is not None else []))
    if op == "Conv2D":
        return TensorValue(conv2d_shape(shapes[0], primitives[primitive_name(node)]))
    if op == "Reshape":
        if isinstance(inputs[1], TensorValue):
            raise CompatError("tensor shape")
        return TensorValue(reshaped(shapes[0], inputs[1]))
    if op == "Transpose":
        return TensorValue([shapes[0][p] for p in inputs[1]])
    if op in ("MatMul", "BatchMatMul", "MatMulExt"):
        a, b = list(shapes[0]), list(shapes[1])
        transpose_a = bool(inputs[2]) if len(inputs) > 2 else False
        transpose_b = bool(inputs[3]) if len(inputs) > 3 else False
        if transpose_a:
            a[-2], a[-1] = a[-1], a[-2]
        if transpose_b:
            b[-2], b[-1] = b[-1], b[-2]
        return TensorValue(broadcast_shapes(a[:-2], b[:-2]) + [a[-2], b[-1]])
    if op == "StridedSlice":
        begin, end, strides, begin_mask, end_mask = inputs[1:6]
        return TensorValue(strided_slice_shape(shapes[0], begin, end, strides, begin_mask, end_mask, inputs[8]))
    if op in ("SumExt", "ReduceMean", "ReduceSum"):
        return TensorValue(reduced_shape(shapes[0], inputs[1], inputs[2]))
    if op == "ExpandDims":
        shape = list(shapes[0])
        axis = inputs[1] + len(shape) + 1 if inputs[1] < 0 else inputs[1]
        return TensorValue(shape[:axis] + [1] + shape[axis:])
    if op == "Concat":
        parts, axis = inputs[0], inputs[1]
        axis = axis if axis >= 0 else axis + len(parts[0].shape)
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        return TensorValue(shape)
    if op == "Gather":
        axis = inputs[2] if inputs[2] >= 0 else inputs[2] + len(shapes[0])
        indices = shapes[1] if shapes[1] is not None else []
        return TensorValue(shapes[0][:axis] + indices + shapes[0][axis + 1:])
    if op == "BroadcastTo":
        target = list(inputs[1])
        x = [1] * (len(target) - len(shapes[0])) + shapes[0]
        return TensorValue([x[i] if d == -1 else d for i, d in enumerate(target)])
    if op == "Shape":
        return tuple(shapes[0])
    if op == "TupleGetItem":
        return inputs[0][inputs[1]]
    if op == "MakeTuple":
        return tuple(inputs) if all(isinstance(v, int) for v in inputs) else list(inputs)
    if op == "ScalarFloorDiv":
        return inputs[0] // inputs[1]
    if op == "ScalarMul":
        return inputs[0] * inputs[1]
    if op == "ScalarAdd":
        return inputs[0] + inputs[1]
    if op == "ScalarSub":
        return inputs[0] - inputs[1]
    raise CompatError(f"no shape function for {op}")

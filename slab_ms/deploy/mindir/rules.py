"""The op table RULES: for each op type of a 2.10 MindIR, how its node is rewritten for Lite 2.0.

A rule gets (ctx, inputs), the GraphContext and the node's input names, while ``ctx.current`` is
the node; it returns (new op type, new inputs, attributes of the new primitive), or None to leave
the node unchanged. Most rules move op settings that 2.10 passes as constant inputs into primitive
attributes, where Lite 2.0 reads them; the rest replace forms Lite 2.0 cannot run or computes
wrongly. A rule may insert new CNodes and constants before the node (``ctx.insert_node``, ...).
"""
from .errors import CompatError
from .shapes import TensorValue

# 2.10's integer format enum as Lite 2.0's format strings
DATA_FORMATS = {0: "NCHW", 1: "NHWC", 2: "NCDHW"}


def keep_as_is(ctx, inputs):
    """Graph plumbing and ops whose 2.10 form Lite 2.0 reads as is."""
    return None


def rule_reshape(ctx, inputs):
    """Shape as an int32 tensor. A shape computed in the graph (2.10's dynamic-batch reshape:
    MakeTuple of constants and Shape(y)[i], maybe through scalar arithmetic) becomes a constant:
    the output shape inferred at batch 1 and 2, -1 where it follows the batch (at most one dim)."""
    x, shape = inputs
    if shape in ctx.constants:
        value = ctx.constant(shape)
        if not isinstance(value, tuple):
            return None
        return "Reshape", [x, ctx.int32_tensor_constant(value)], {}
    output = ctx.current.output[0]
    dims = ctx.shape(output)
    if not isinstance(ctx.values_at_batch1.get(output), TensorValue):
        raise CompatError("cannot infer the shape this Reshape computes")
    if sum(d < 0 for d in dims) > 1:
        raise CompatError(f"Reshape to {dims}: more than one dim follows the batch")
    return "Reshape", [x, ctx.int32_tensor_constant(dims)], {}


def rule_transpose(ctx, inputs):
    """Permutation as an int32 tensor (Lite 2.0's dynamic-shape preprocessing reads only int32).

    Transpose(x: (B, H, W, C), (0, 3, 1, 2)) is rewritten as
    Reshape(Transpose(Reshape(x, (-1, H*W, C)), (0, 2, 1)), (-1, C, H, W)) (same values; the inner
    Reshape is skipped when x is Reshape(y: (..., H*W, C), ...)). Lite 2.0 with a dynamic batch
    otherwise fuses this NHWC->NCHW transpose with the one it puts before an NCHW conv and then
    rejects the conv ("Unexpected input format 0")."""
    x, perm = inputs
    perm = ctx.constant(perm)
    if not isinstance(perm, tuple):
        return None
    if perm == (0, 3, 1, 2):
        x_shape = ctx.shape(x)
        if len(x_shape) == 4 and all(d > 0 for d in x_shape[1:]):
            _, h, w, c = x_shape
            return "Reshape", [_nhwc_to_nchw_as_3d(ctx, x, h, w, c), ctx.int32_tensor_constant((-1, c, h, w))], {}
    return "Transpose", [x, ctx.int32_tensor_constant(perm)], {}


def _nhwc_to_nchw_as_3d(ctx, x, h, w, c):
    """A new Transpose of x (B, H, W, C), seen as (..., H*W, C), to (..., C, H*W)."""
    flat, flat_shape = None, None
    reshape = ctx.producers.get(x)
    if reshape is not None and ctx.original_op(reshape) == "Reshape":
        source = ctx.original_inputs(reshape)[0]
        source_shape = ctx.shape(source)
        if (len(source_shape) >= 3 and source_shape[-2] == h * w and source_shape[-1] == c
                and all(d > 0 for d in source_shape[1:])):
            flat, flat_shape = source, source_shape
    if flat is None:
        flat_shape = [-1, h * w, c]
        flat = ctx.insert_node("Reshape", [x, ctx.int32_tensor_constant((-1, h * w, c))], {}, flat_shape)
    rank = len(flat_shape)
    perm = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    return ctx.insert_node("Transpose", [flat, ctx.int32_tensor_constant(perm)], {}, flat_shape[:-2] + [c, h * w])


def _shape_item(ctx, name):
    """(y, i) when ``name`` is TupleGetItem(Shape(y), i), else None."""
    get_item = ctx.producers.get(name)
    if get_item is None or ctx.original_op(get_item) != "TupleGetItem":
        return None
    shape = ctx.producers.get(ctx.original_inputs(get_item)[0])
    if shape is None or ctx.original_op(shape) != "Shape":
        return None
    return ctx.original_inputs(shape)[0], int(ctx.constant(ctx.original_inputs(get_item)[1]))


def rule_broadcast_to(ctx, inputs):
    """BroadcastTo(t, (Shape(y)[0], d1, ...)) with t of batch 1 (a class token expanded to the batch)
    becomes Add(ZerosLike(y[:, 0:1, ..., 0:1]), t): Lite 2.0 cannot compute the shape tuple."""
    t, shape = inputs
    t_shape = ctx.shape(t)
    if shape in ctx.constants:
        raise CompatError("BroadcastTo to a constant shape is not handled")
    make_tuple = ctx.producers.get(shape)
    if make_tuple is None or ctx.original_op(make_tuple) != "MakeTuple":
        raise CompatError("BroadcastTo shape is not a MakeTuple")
    dims = ctx.original_inputs(make_tuple)
    first = _shape_item(ctx, dims[0])
    if first is None or first[1] != 0 or t_shape[0] != 1 or len(dims) != len(t_shape):
        raise CompatError("only BroadcastTo(t, (Shape(y)[0], ...)) with t's batch 1 is handled")
    for dim, d in zip(dims[1:], t_shape[1:]):
        if dim not in ctx.constants or int(ctx.constant(dim)) not in (d, -1):
            raise CompatError("BroadcastTo may only broadcast the batch")
    y = first[0]
    rank = len(ctx.shape(y))
    slice_shape = [-1] + [1] * (rank - 1)
    first_elements = ctx.insert_node(
        "StridedSlice", [y, ctx.int_tuple_constant([0] * rank), ctx.int_tuple_constant([0] + [1] * (rank - 1)),
                         ctx.int_tuple_constant([1] * rank)],
        {"begin_mask": 0, "end_mask": 1, "ellipsis_mask": 0, "new_axis_mask": 0, "shrink_axis_mask": 0}, slice_shape)
    zeros = ctx.insert_node("ZerosLike", [first_elements], {}, slice_shape)
    if rank != len(t_shape):
        zeros_shape = [-1] + [1] * (len(t_shape) - 1)
        zeros = ctx.insert_node("Reshape", [zeros, ctx.int32_tensor_constant(zeros_shape)], {}, zeros_shape)
    return "Add", [zeros, t], {}


def rule_concat(ctx, inputs):
    """The axis input becomes the attribute 'axis'."""
    parts, axis = inputs
    return "Concat", [parts], {"axis": int(ctx.constant(axis))}


def rule_matmul(ctx, inputs):
    """The transpose inputs become the attributes 'transpose_a' and 'transpose_b'."""
    x, w, transpose_a, transpose_b = inputs
    return "MatMul", [x, w], {"transpose_a": ctx.constant(transpose_a), "transpose_b": ctx.constant(transpose_b)}


def rule_batch_matmul(ctx, inputs):
    """The transpose inputs become the attributes 'transpose_a' and 'transpose_b'."""
    x, w, transpose_a, transpose_b = inputs
    return "BatchMatMul", [x, w], {"transpose_a": ctx.constant(transpose_a),
                                   "transpose_b": ctx.constant(transpose_b)}


def rule_matmul_ext(ctx, inputs):
    """Lite 2.0 has no MatMulExt: two 2-D inputs make a MatMul, two inputs of the same rank (3 or
    more) a BatchMatMul, both without transposes."""
    a, b = inputs
    rank_a, rank_b = ctx.rank(a), ctx.rank(b)
    if rank_a == 2 and rank_b == 2:
        return "MatMul", [a, b], {"transpose_a": False, "transpose_b": False}
    if rank_a == rank_b and rank_a >= 3:
        return "BatchMatMul", [a, b], {"transpose_a": False, "transpose_b": False}
    raise CompatError(f"MatMulExt with input ranks {rank_a} and {rank_b} has no Lite 2.0 form")


def rule_bias_add(ctx, inputs):
    """The format input (2.10's enum) becomes the attributes 'data_format' and 'format' (strings)."""
    x, bias, data_format = inputs
    return "BiasAdd", [x, bias], {"data_format": DATA_FORMATS[ctx.constant(data_format)],
                                  "format": DATA_FORMATS[ctx.constant(data_format)]}


def rule_softmax(ctx, inputs):
    """The axis input becomes the attribute 'axis', always a tuple."""
    x, axis = inputs
    axis = ctx.constant(axis)
    axis = tuple(axis) if isinstance(axis, tuple) else (axis,)
    return "Softmax", [x], {"axis": axis}


def rule_strided_slice(ctx, inputs):
    """The five mask inputs become attributes; begin, end and strides stay inputs."""
    x, begin, end, strides, begin_mask, end_mask, ellipsis_mask, new_axis_mask, shrink_axis_mask = inputs
    return "StridedSlice", [x, begin, end, strides], {
        "begin_mask": ctx.constant(begin_mask), "end_mask": ctx.constant(end_mask),
        "ellipsis_mask": ctx.constant(ellipsis_mask), "new_axis_mask": ctx.constant(new_axis_mask),
        "shrink_axis_mask": ctx.constant(shrink_axis_mask)}


def reduce_rule(op):
    """The rule for a reduction ``op``(x, axis, keep_dims)."""
    def rule(ctx, inputs):
        """The keep_dims input becomes the attribute 'keep_dims'; the axis stays an input."""
        x, axis, keep_dims = inputs
        return op, [x, axis], {"keep_dims": ctx.constant(keep_dims)}
    return rule


def rule_sum_ext(ctx, inputs):
    """Lite 2.0 has no SumExt: a sum over given dims without a dtype is a ReduceSum."""
    x, dim, keep_dims, dtype = inputs
    if ctx.constant(dtype) is not None:
        raise CompatError("SumExt with a dtype has no Lite 2.0 form")
    if ctx.constant(dim) is None:
        raise CompatError("SumExt over all dims (dim=None) not handled")
    return "ReduceSum", [x, dim], {"keep_dims": ctx.constant(keep_dims)}


def scalar_operand_rule(op):
    """The rule for Muls/Divs(x, scalar): Lite 2.0 has neither; they become ``op``(x, s) with s a
    float32 scalar tensor."""
    def rule(ctx, inputs):
        x, scalar = inputs
        return op, [x, ctx.float_scalar_constant(float(ctx.constant(scalar)))], {}
    return rule


def rule_gather(ctx, inputs):
    """Gather(x, indices, axis, batch_dims): batch_dims becomes an attribute, the axis stays an input.
    Other forms are left as they are."""
    if len(inputs) == 4:
        x, indices, axis, batch_dims = inputs
        return "Gather", [x, indices, axis], {"batch_dims": ctx.constant(batch_dims)}
    return None


def rule_layer_norm(ctx, inputs):
    """LayerNorm is decomposed where its output is used (rule_tuple_get_item): Lite 2.0's CPU
    LayerNorm kernel leaves the rows of every thread but the first at zero when it runs on more
    than one thread. The LayerNorm node itself is then unreachable and removed."""
    return None


def _decomposed_layer_norm(ctx, layer_norm):
    """(x - mean) / sqrt(var + eps) * gamma + beta over the axes from begin_norm_axis on, as new CNodes
    and the final Add (the rule's result)."""
    x, gamma, beta, begin_norm_axis, begin_params_axis, epsilon = ctx.original_inputs(layer_norm)
    x_shape = ctx.shape(x)
    rank = len(x_shape)
    begin_norm_axis = int(ctx.constant(begin_norm_axis))
    # begin_params_axis must be a constant int too, though the decomposition does not need it: gamma and
    # beta broadcast over the trailing axes as they are
    int(ctx.constant(begin_params_axis))
    if begin_norm_axis < 0:
        begin_norm_axis += rank
    reduced = x_shape[:begin_norm_axis] + [1] * (rank - begin_norm_axis)
    axes = ctx.int_tuple_constant(tuple(range(begin_norm_axis, rank)))
    mean = ctx.insert_node("ReduceMean", [x, axes], {"keep_dims": True}, reduced)
    centered = ctx.insert_node("Sub", [x, mean], {}, x_shape)
    squared = ctx.insert_node("Mul", [centered, centered], {}, x_shape)
    variance = ctx.insert_node("ReduceMean", [squared, axes], {"keep_dims": True}, reduced)
    # Sqrt and RealDiv: Lite 2.0's Rsqrt is off by ~1e-4 relative
    eps = ctx.float_scalar_constant(float(ctx.constant(epsilon)))
    std = ctx.insert_node("Sqrt", [ctx.insert_node("Add", [variance, eps], {}, reduced)], {}, reduced)
    normalized = ctx.insert_node("RealDiv", [centered, std], {}, x_shape)
    return "Add", [ctx.insert_node("Mul", [normalized, gamma], {}, x_shape), beta], {}


def rule_rsqrt(ctx, inputs):
    """Rsqrt(x) -> RealDiv(1, Sqrt(x)): Lite 2.0's Rsqrt is off by ~1e-4 relative."""
    (x,) = inputs
    sqrt = ctx.insert_node("Sqrt", [x], {}, ctx.shape(x))
    return "RealDiv", [ctx.float_scalar_constant(1.0), sqrt], {}


def rule_tuple_get_item(ctx, inputs):
    """TupleGetItem(LayerNorm(...), 0) becomes the decomposed LayerNorm (see rule_layer_norm);
    any other TupleGetItem is kept."""
    source, index = inputs
    producer = ctx.producers.get(source)
    if producer is not None and ctx.original_op(producer) == "LayerNorm":
        if int(ctx.constant(index)) != 0:
            raise CompatError("only LayerNorm's first output (y) is handled")
        return _decomposed_layer_norm(ctx, producer)
    return None


def rule_batch_norm(ctx, inputs):
    """The training flag, epsilon, momentum and format inputs become attributes."""
    x, scale, bias, mean, variance, is_training, epsilon, momentum, data_format = inputs
    return "BatchNorm", [x, scale, bias, mean, variance], {
        "is_training": ctx.constant(is_training), "epsilon": ctx.constant(epsilon),
        "momentum": ctx.constant(momentum), "data_format": DATA_FORMATS[ctx.constant(data_format)],
        "format": DATA_FORMATS[ctx.constant(data_format)]}


def rule_gelu(ctx, inputs):
    """GeLU with the attribute approximate=True: ops.GeLU in 2.10 is the tanh approximation."""
    return "GeLU", inputs[:1], {"approximate": True}


# ops of shape arithmetic: kept only while every Reshape/BroadcastTo using them is rewritten to a
# constant shape, after which they are unreachable and removed
SHAPE_ONLY = {"Shape", "ScalarFloorDiv", "ScalarMul", "ScalarAdd", "ScalarSub"}

RULES = {
    **{op: keep_as_is for op in SHAPE_ONLY},
    # graph plumbing and ops whose 2.10 form Lite 2.0 reads as is
    "Load": keep_as_is, "UpdateState": keep_as_is, "Depend": keep_as_is, "MakeTuple": keep_as_is,
    "ExpandDims": keep_as_is, "Conv2D": keep_as_is, "Add": keep_as_is, "Sub": keep_as_is, "Erf": keep_as_is,
    "Mul": keep_as_is, "Div": keep_as_is, "RealDiv": keep_as_is, "ReLU": keep_as_is, "Sigmoid": keep_as_is,
    # forms Lite 2.0 cannot run or gets wrong
    "TupleGetItem": rule_tuple_get_item,
    "Reshape": rule_reshape,
    "Transpose": rule_transpose,
    "Rsqrt": rule_rsqrt,
    "BroadcastTo": rule_broadcast_to,
    "LayerNorm": rule_layer_norm,
    # constant inputs -> attributes
    "Concat": rule_concat,
    "MatMul": rule_matmul,
    "BatchMatMul": rule_batch_matmul,
    "MatMulExt": rule_matmul_ext,
    "BiasAdd": rule_bias_add,
    "Softmax": rule_softmax,
    "StridedSlice": rule_strided_slice,
    "ReduceMean": reduce_rule("ReduceMean"),
    "ReduceSum": reduce_rule("ReduceSum"),
    "SumExt": rule_sum_ext,
    "Muls": scalar_operand_rule("Mul"),
    "Divs": scalar_operand_rule("RealDiv"),
    "Gather": rule_gather,
    "BatchNorm": rule_batch_norm,
    "GeLU": rule_gelu,
}

"""Rewrite a MindIR written by MindSpore 2.10 (mind_ir_version 3) into the form MindSpore Lite 2.0
accepts (mind_ir_version 1): op settings that 2.10 passes as constant inputs become primitive
attributes, and ops Lite 2.0 does not know are mapped to their 2.0 equivalents
(``export.py --mindir-compat 2.0`` calls :func:`convert_file`).

The rewrite is a table, RULES: one entry per op type. An op not in the table is a one-line error.
Shapes are inferred at batch 1 and 2 so that reshapes computed in the graph become constants
with -1 for the batch (Lite 2.0 cannot run 2.10's Shape ops), and a few forms Lite 2.0's CPU
kernels get wrong are rewritten (see the rules' docstrings).
"""
import struct

from mindspore.train import mind_ir_pb2 as pb

from .errors import CompatError
from .proto import AttributeProto as A, constant_value as _const_value, encode_attribute as _attr, read_model, \
    write_model


# ---------------------------------------------------------------- shape inference
# 2.10 loses static dims after a shape computed in the graph (the recorded abstracts say -1), so the
# rewrite infers every value itself, once with batch 1 and once with batch 2: a dim that differs
# between the two runs follows the batch (-1 in Lite), any other dim is static.
class T:
    """A tensor value: its shape."""
    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = [int(d) for d in shape]


def _bcast(a, b):
    r = max(len(a), len(b))
    a = [1] * (r - len(a)) + list(a)
    b = [1] * (r - len(b)) + list(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            raise CompatError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return out


def _norm_axes(axes, r):
    axes = axes if isinstance(axes, (tuple, list)) else (axes,)
    return sorted(a + r if a < 0 else a for a in axes)


def _reduce_shape(s, axes, keep):
    if axes is None or axes == ():
        axes = tuple(range(len(s)))
    ax = _norm_axes(axes, len(s))
    return [1 if i in ax else d for i, d in enumerate(s) if keep or i not in ax]


def _reshape(s, tgt):
    tgt = list(tgt)
    n = 1
    for d in s:
        n *= d
    for i, d in enumerate(tgt):
        if d == 0:
            tgt[i] = s[i]
    if -1 in tgt:
        known = 1
        for d in tgt:
            if d != -1:
                known *= d
        tgt[tgt.index(-1)] = n // known
    return tgt


def _strided_slice(s, begin, end, strides, bm, em, sm):
    out = []
    for i, d in enumerate(s):
        if i >= len(begin):
            out.append(d)
            continue
        b = None if bm >> i & 1 else begin[i]
        e = None if em >> i & 1 else end[i]
        if sm >> i & 1:
            continue
        out.append(len(range(*slice(b, e, strides[i]).indices(d))))
    return out


def _conv2d(x, w, prim):
    at = {a.name: a for a in prim.attribute}

    def ints(name):
        return [int(v.ints[0]) if v.ints else int(v.i) for v in at[name].values]
    k = ints("kernel_size")
    st = ints("stride")[-2:]
    dil = ints("dilation")[-2:]
    mode = at["pad_mode"].s.decode() if at["pad_mode"].type == A.STRING else int(at["pad_mode"].i)
    pads = ints("pad_list") if "pad_list" in at else ints("pad")
    n, _, h, wd = x
    out = []
    for i, d in enumerate((h, wd)):
        if mode in ("same", 1):
            out.append(-(-d // st[i]))
        else:
            p = (pads[2 * i] + pads[2 * i + 1]) if mode in ("pad", 0) else 0
            out.append((d + p - dil[i] * (k[i] - 1) - 1) // st[i] + 1)
    return [n, int(at["out_channel"].i)] + out


def _tensor_const_shape(a):
    return [int(d) for d in a.tensors[0].dims]


def infer_values(ctx, batch):
    """{name: T(shape) | python value | [T, ...]} for every value in the graph at this batch."""
    vals = {}
    for name, p in ctx.params.items():
        vals[name] = T(p.dims)
    for name, i in ctx.inputs.items():
        vals[name] = T([batch if d < 0 else d for d in i.tensor[0].dims])
    for n in ctx.model.graph.node:
        out = n.output[0]
        if n.op_type == "Constant":
            a = n.attribute[0]
            vals[out] = T(_tensor_const_shape(a)) if a.type == A.TENSORS else _const_value(n)
            continue
        op, ins = ctx.orig[n.name]
        try:
            vals[out] = _infer_op(ctx, n, op, [vals.get(i) for i in ins])
        except (CompatError, TypeError, KeyError, IndexError, AttributeError, ValueError, ZeroDivisionError):
            vals[out] = None  # unknown: rules that need it fall back to the recorded abstract
    return vals


def _infer_op(ctx, n, op, v):
    s = [x.shape if isinstance(x, T) else None for x in v]
    c = v  # constant inputs are python values
    same = {"BiasAdd", "ReLU", "Sigmoid", "Softmax", "GeLU", "Muls", "Divs", "ZerosLike", "Cast", "Tanh",
            "Exp", "Neg", "Sqrt", "Rsqrt", "Abs", "Square", "Erf", "SiLU", "FastGeLU"}
    if op in same:
        return T(s[0])
    if op in ("Load", "Depend"):
        return v[0]
    if op == "UpdateState":
        return None
    if op in ("Add", "Sub", "Mul", "Div", "RealDiv", "Maximum", "Minimum", "Pow"):
        return T(_bcast(s[0] if s[0] is not None else [], s[1] if s[1] is not None else []))
    if op == "Conv2D":
        return T(_conv2d(s[0], s[1], ctx.prims[n.op_type[5:]]))
    if op == "Reshape":
        tgt = c[1].shape if False else c[1]
        if isinstance(tgt, T):
            raise CompatError("tensor shape")
        return T(_reshape(s[0], tgt))
    if op == "Transpose":
        return T([s[0][p] for p in c[1]])
    if op in ("MatMul", "BatchMatMul", "MatMulExt"):
        a, b = list(s[0]), list(s[1])
        ta = bool(c[2]) if len(c) > 2 else False
        tb = bool(c[3]) if len(c) > 3 else False
        if ta:
            a[-2], a[-1] = a[-1], a[-2]
        if tb:
            b[-2], b[-1] = b[-1], b[-2]
        return T(_bcast(a[:-2], b[:-2]) + [a[-2], b[-1]])
    if op == "StridedSlice":
        return T(_strided_slice(s[0], c[1], c[2], c[3], c[4], c[5], c[8]))
    if op == "SumExt":
        return T(_reduce_shape(s[0], c[1], c[2]))
    if op in ("ReduceMean", "ReduceSum", "ReduceMax"):
        return T(_reduce_shape(s[0], c[1], c[2]))
    if op == "ExpandDims":
        r = list(s[0])
        ax = c[1] + len(r) + 1 if c[1] < 0 else c[1]
        return T(r[:ax] + [1] + r[ax:])
    if op == "Concat":
        parts = v[0]
        ax = c[1] if c[1] >= 0 else c[1] + len(parts[0].shape)
        sh = list(parts[0].shape)
        sh[ax] = sum(p.shape[ax] for p in parts)
        return T(sh)
    if op == "Gather":
        ax = c[2] if c[2] >= 0 else c[2] + len(s[0])
        idx = s[1] if s[1] is not None else []
        return T(s[0][:ax] + idx + s[0][ax + 1:])
    if op == "BroadcastTo":
        tgt = list(c[1])
        x = [1] * (len(tgt) - len(s[0])) + s[0]
        return T([x[i] if d == -1 else d for i, d in enumerate(tgt)])
    if op == "Shape":
        return tuple(s[0])
    if op == "TupleGetItem":
        return v[0][c[1]]
    if op == "MakeTuple":
        return tuple(v) if all(isinstance(x, int) for x in v) else list(v)
    if op == "ScalarFloorDiv":
        return c[0] // c[1]
    if op == "ScalarMul":
        return c[0] * c[1]
    if op == "ScalarAdd":
        return c[0] + c[1]
    if op == "ScalarSub":
        return c[0] - c[1]
    raise CompatError(f"no shape function for {op}")


def merge_batch(v1, v2):
    """Shape (or int tuple) with -1 where the batch-1 and batch-2 values differ."""
    return [a if a == b else -1 for a, b in zip(v1, v2)]


# ---------------------------------------------------------------- rewrite context
class Ctx:
    def __init__(self, model):
        self.model = model
        g = model.graph
        self.prims = {p.name: p for p in model.primitives}
        self.consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
        self.producers = {o: n for n in g.node for o in n.output}
        self.params = {p.name: p for p in g.parameter}
        self.inputs = {i.name: i for i in g.input}
        self.orig = {n.name: (self.prims[n.op_type[5:]].op_type if n.op_type.startswith("REF::") else n.op_type,
                              list(n.input)) for n in g.node}
        self.new_nodes = []  # extra Constant nodes to insert
        self.new_prims = {}  # signature -> PrimitiveProto
        self.before = {}  # node name -> new CNodes to insert before it
        self.node = None  # the node a rule is rewriting
        self._n = 0

    def const(self, name):
        if name not in self.consts:
            raise CompatError(f"input {name} is not a constant")
        return _const_value(self.consts[name])

    def rank(self, name):
        """Rank of a value from its producer's 'shape' attribute or a parameter/input."""
        if name in self.params:
            return len(self.params[name].dims)
        if name in self.inputs:
            return len(self.inputs[name].tensor[0].dims)
        n = self.producers.get(name)
        if n is not None:
            for a in n.attribute:
                if a.name == "shape" and a.type == A.TENSORS:
                    return len(a.tensors[0].dims)
        raise CompatError(f"unknown rank of {name}")

    def prim_for(self, op, base, attrs):
        """A primitive of type op with base's attributes (input_names dropped) plus attrs."""
        sig = (op, base.name if base is not None else "", tuple(sorted((k, repr(v)) for k, v in attrs.items())))
        if sig not in self.new_prims:
            p = pb.PrimitiveProto()
            p.op_type = op
            p.name = f"{op}:compat{len(self.new_prims)}"
            if base is not None:
                p.instance_name = base.instance_name
                p.prim_type = base.prim_type
                for a in base.attribute:
                    if a.name not in set(attrs) | {"input_names"}:
                        p.attribute.append(a)
            else:
                p.instance_name = ""
                p.prim_type = pb.PrimitiveProto.PRIMITIVE_FUNCTION
            for k, v in attrs.items():
                p.attribute.append(_attr(k, v))
            self.new_prims[sig] = p
        return self.new_prims[sig]

    def add_cnode(self, op, inputs, attrs, out_shape):
        """New float32 CNode inserted before the node being rewritten; returns its output name."""
        self._n += 1
        name = f"{self.node.name}_compat{self._n}"
        n = pb.NodeProto(name=name, op_type="REF::" + self.prim_for(op, None, attrs).name)
        n.input.extend(inputs)
        n.output.append(name)
        n.domain = self.node.domain + f"/compat{self._n}"
        a = n.attribute.add()
        a.name, a.type = "shape", A.TENSORS
        t = a.tensors.add()
        t.dims.extend(out_shape)
        t.data_type = pb.TensorProto.FLOAT
        self.before.setdefault(self.node.name, []).append(n)
        self.producers[name] = n
        self.orig[name] = (op, list(inputs))
        return name

    def prim_type(self, node):
        """The node's op type in the input file (before any rewrite)."""
        return self.orig[node.name][0]

    def orig_inputs(self, node):
        return self.orig[node.name][1]

    def infer(self):
        self.v1 = infer_values(self, 1)
        self.v2 = infer_values(self, 2)

    def out_shape(self, node_output):
        """Shape of a tensor value, -1 for dims that follow the batch."""
        a, b = self.v1.get(node_output), self.v2.get(node_output)
        if isinstance(a, T) and isinstance(b, T) and len(a.shape) == len(b.shape):
            return merge_batch(a.shape, b.shape)
        if node_output in self.params:
            return [int(d) for d in self.params[node_output].dims]
        if node_output in self.inputs:
            return [int(d) for d in self.inputs[node_output].tensor[0].dims]
        n = self.producers[node_output]
        for a in n.attribute:
            if a.name == "shape" and a.type == A.TENSORS:
                return [int(d) for d in a.tensors[0].dims]
        raise CompatError(f"no static output shape recorded for {node_output}")

    def _const(self):
        """A new Constant node (added before every CNode) and its output name."""
        self._n += 1
        name = f"CompatConst_{self._n}"
        n = pb.NodeProto(name=name, op_type="Constant")
        n.output.append(name)
        self.new_nodes.append(n)
        return n, name

    def _tensor_const(self, data_type, dims, raw):
        n, name = self._const()
        a = n.attribute.add()
        a.name, a.type = "value", A.TENSORS
        t = a.tensors.add()
        t.data_type = data_type
        t.dims.extend(dims)
        t.name = "value0"
        t.raw_data = raw
        return name

    def int_tuple_const(self, values):
        n, name = self._const()
        n.attribute.append(_attr("value", tuple(int(v) for v in values)))
        return name

    def int32_tensor_const(self, values):
        return self._tensor_const(pb.TensorProto.INT32, [len(values)], struct.pack(f"<{len(values)}i", *values))

    def float_tensor_const(self, value):
        return self._tensor_const(pb.TensorProto.FLOAT, [], struct.pack("<f", value))


# ---------------------------------------------------------------- per-op rules
# A rule gets (ctx, inputs) and returns (new_op_type, new_inputs, attrs) or None for "unchanged".
def keep(ctx, ins):
    return None


def rule_reshape(ctx, ins):
    """Shape as an int32 tensor. A shape computed in the graph (2.10's dynamic-batch reshape:
    MakeTuple of constants and Shape(y)[i], maybe through scalar arithmetic) becomes a constant:
    the output shape inferred at batch 1 and 2, -1 where it follows the batch (at most one dim)."""
    x, shape = ins
    if shape in ctx.consts:
        v = ctx.const(shape)
        if not isinstance(v, tuple):
            return None
        return "Reshape", [x, ctx.int32_tensor_const(v)], {}
    dims = ctx.out_shape(ctx.node.output[0])
    a = ctx.v1.get(ctx.node.output[0])
    if not isinstance(a, T):
        raise CompatError("cannot infer the shape this Reshape computes")
    if sum(d < 0 for d in dims) > 1:
        raise CompatError(f"Reshape to {dims}: more than one dim follows the batch")
    return "Reshape", [x, ctx.int32_tensor_const(dims)], {}


def rule_transpose(ctx, ins):
    """Permutation as an int32 tensor (Lite 2.0's dynamic-shape preprocessing reads only int32)."""
    x, perm = ins
    v = ctx.const(perm)
    if not isinstance(v, tuple):
        return None
    # Transpose(x: (B, H, W, C), (0, 3, 1, 2)) is rewritten as
    # Reshape(Transpose(Reshape(x, (-1, H*W, C)), (0, 2, 1)), (-1, C, H, W)) (same values; the inner
    # Reshape is skipped when x is Reshape(y: (..., H*W, C), ...)). Lite 2.0 with a dynamic batch
    # otherwise fuses this NHWC->NCHW transpose with the one it puts before an NCHW conv and then
    # rejects the conv ("Unexpected input format 0").
    if v == (0, 3, 1, 2):
        xs = ctx.out_shape(x)
        if len(xs) == 4 and all(d > 0 for d in xs[1:]):
            _, h, w, c = xs
            rs = ctx.producers.get(x)
            y = None
            if rs is not None and ctx.prim_type(rs) == "Reshape":
                y0 = ctx.orig_inputs(rs)[0]
                ys = ctx.out_shape(y0)
                if len(ys) >= 3 and ys[-2] == h * w and ys[-1] == c and all(d > 0 for d in ys[1:]):
                    y = y0
            if y is None:
                y = ctx.add_cnode("Reshape", [x, ctx.int32_tensor_const((-1, h * w, c))], {}, [-1, h * w, c])
                ys = [-1, h * w, c]
            r = len(ys)
            perm = tuple(range(r - 2)) + (r - 1, r - 2)
            t = ctx.add_cnode("Transpose", [y, ctx.int32_tensor_const(perm)], {}, ys[:-2] + [c, h * w])
            return "Reshape", [t, ctx.int32_tensor_const((-1, c, h, w))], {}
    return "Transpose", [x, ctx.int32_tensor_const(v)], {}


def _shape_item(ctx, v):
    """(y, i) when v is TupleGetItem(Shape(y), i), else None."""
    tg = ctx.producers.get(v)
    if tg is None or ctx.prim_type(tg) != "TupleGetItem":
        return None
    sh = ctx.producers.get(ctx.orig_inputs(tg)[0])
    if sh is None or ctx.prim_type(sh) != "Shape":
        return None
    return ctx.orig_inputs(sh)[0], int(ctx.const(ctx.orig_inputs(tg)[1]))


def rule_broadcast_to(ctx, ins):
    """BroadcastTo(t, (Shape(y)[0], d1, ...)) with t of batch 1 (a class token expanded to the batch)
    becomes Add(ZerosLike(y[:, 0:1, ..., 0:1]), t): Lite 2.0 cannot compute the shape tuple."""
    t, shape = ins
    ts = ctx.out_shape(t)
    if shape in ctx.consts:
        raise CompatError("BroadcastTo to a constant shape is not handled")
    mk = ctx.producers.get(shape)
    if mk is None or ctx.prim_type(mk) != "MakeTuple":
        raise CompatError("BroadcastTo shape is not a MakeTuple")
    elems = ctx.orig_inputs(mk)
    first = _shape_item(ctx, elems[0])
    if first is None or first[1] != 0 or ts[0] != 1 or len(elems) != len(ts):
        raise CompatError("only BroadcastTo(t, (Shape(y)[0], ...)) with t's batch 1 is handled")
    for e, d in zip(elems[1:], ts[1:]):
        if e not in ctx.consts or int(ctx.const(e)) not in (d, -1):
            raise CompatError("BroadcastTo may only broadcast the batch")
    y = first[0]
    r = len(ctx.out_shape(y))
    ones = [-1] + [1] * (r - 1)
    sl = ctx.add_cnode("StridedSlice", [y, ctx.int_tuple_const([0] * r), ctx.int_tuple_const([0] + [1] * (r - 1)),
                                        ctx.int_tuple_const([1] * r)],
                       {"begin_mask": 0, "end_mask": 1, "ellipsis_mask": 0, "new_axis_mask": 0,
                        "shrink_axis_mask": 0}, ones)
    z = ctx.add_cnode("ZerosLike", [sl], {}, ones)
    if r != len(ts):
        z = ctx.add_cnode("Reshape", [z, ctx.int32_tensor_const([-1] + [1] * (len(ts) - 1))], {},
                          [-1] + [1] * (len(ts) - 1))
    return "Add", [z, t], {}


def rule_concat(ctx, ins):
    tup, axis = ins
    return "Concat", [tup], {"axis": int(ctx.const(axis))}


def rule_matmul(ctx, ins):
    x, w, ta, tb = ins
    return "MatMul", [x, w], {"transpose_a": ctx.const(ta), "transpose_b": ctx.const(tb)}


def rule_batch_matmul(ctx, ins):
    x, w, ta, tb = ins
    return "BatchMatMul", [x, w], {"transpose_a": ctx.const(ta), "transpose_b": ctx.const(tb)}


def rule_matmul_ext(ctx, ins):
    a, b = ins
    ra, rb = ctx.rank(a), ctx.rank(b)
    if ra == 2 and rb == 2:
        return "MatMul", [a, b], {"transpose_a": False, "transpose_b": False}
    if ra == rb and ra >= 3:
        return "BatchMatMul", [a, b], {"transpose_a": False, "transpose_b": False}
    raise CompatError(f"MatMulExt with input ranks {ra} and {rb} has no Lite 2.0 form")


_FORMATS = {0: "NCHW", 1: "NHWC", 2: "NCDHW"}


def rule_bias_add(ctx, ins):
    x, b, fmt = ins
    return "BiasAdd", [x, b], {"data_format": _FORMATS[ctx.const(fmt)], "format": _FORMATS[ctx.const(fmt)]}


def rule_softmax(ctx, ins):
    x, axis = ins
    axis = ctx.const(axis)
    axis = tuple(axis) if isinstance(axis, tuple) else (axis,)
    return "Softmax", [x], {"axis": axis}


def rule_strided_slice(ctx, ins):
    x, begin, end, strides, bm, em, elm, nam, sam = ins
    return "StridedSlice", [x, begin, end, strides], {
        "begin_mask": ctx.const(bm), "end_mask": ctx.const(em), "ellipsis_mask": ctx.const(elm),
        "new_axis_mask": ctx.const(nam), "shrink_axis_mask": ctx.const(sam)}


def _reduce(op):
    def rule(ctx, ins):
        x, axis, keep = ins
        return op, [x, axis], {"keep_dims": ctx.const(keep)}
    return rule


def rule_sum_ext(ctx, ins):
    x, dim, keep, dtype = ins
    if ctx.const(dtype) is not None:
        raise CompatError("SumExt with a dtype has no Lite 2.0 form")
    if ctx.const(dim) is None:
        raise CompatError("SumExt over all dims (dim=None) not handled")
    return "ReduceSum", [x, dim], {"keep_dims": ctx.const(keep)}


def _scalar_op(op):
    def rule(ctx, ins):
        x, s = ins
        return op, [x, ctx.float_tensor_const(float(ctx.const(s)))], {}
    return rule


def rule_gather(ctx, ins):
    if len(ins) == 4:
        x, idx, axis, batch_dims = ins
        return "Gather", [x, idx, axis], {"batch_dims": ctx.const(batch_dims)}
    return None


def rule_layer_norm(ctx, ins):
    """LayerNorm is decomposed where its output is used (rule_tuple_get_item): Lite 2.0's CPU
    LayerNorm kernel leaves the rows of every thread but the first at zero when it runs on more
    than one thread. The LayerNorm node itself is then unreachable and removed."""
    return None


def _layer_norm_decomposed(ctx, ln):
    x, g, b, bna, bpa, eps = ctx.orig_inputs(ln)
    xs = ctx.out_shape(x)
    r = len(xs)
    bna, bpa = int(ctx.const(bna)), int(ctx.const(bpa))
    bna, bpa = (bna + r if bna < 0 else bna), (bpa + r if bpa < 0 else bpa)
    axes = tuple(range(bna, r))
    red = xs[:bna] + [1] * (r - bna)
    ax = ctx.int_tuple_const(axes)
    m = ctx.add_cnode("ReduceMean", [x, ax], {"keep_dims": True}, red)
    d = ctx.add_cnode("Sub", [x, m], {}, xs)
    v = ctx.add_cnode("ReduceMean", [ctx.add_cnode("Mul", [d, d], {}, xs), ax], {"keep_dims": True}, red)
    # Sqrt and RealDiv: Lite 2.0's Rsqrt is off by ~1e-4 relative
    sd = ctx.add_cnode("Sqrt", [ctx.add_cnode("Add", [v, ctx.float_tensor_const(float(ctx.const(eps)))], {}, red)],
                       {}, red)
    n = ctx.add_cnode("RealDiv", [d, sd], {}, xs)
    return "Add", [ctx.add_cnode("Mul", [n, g], {}, xs), b], {}


def rule_rsqrt(ctx, ins):
    """Rsqrt(x) -> RealDiv(1, Sqrt(x)): Lite 2.0's Rsqrt is off by ~1e-4 relative."""
    (x,) = ins
    sq = ctx.add_cnode("Sqrt", [x], {}, ctx.out_shape(x))
    return "RealDiv", [ctx.float_tensor_const(1.0), sq], {}


def rule_tuple_get_item(ctx, ins):
    src, idx = ins
    p = ctx.producers.get(src)
    if p is not None and p.name in ctx.orig and ctx.prim_type(p) == "LayerNorm":
        if int(ctx.const(idx)) != 0:
            raise CompatError("only LayerNorm's first output (y) is handled")
        return _layer_norm_decomposed(ctx, p)
    return None


def rule_batch_norm(ctx, ins):
    x, s, b, m, v, training, eps, momentum, fmt = ins
    return "BatchNorm", [x, s, b, m, v], {"is_training": ctx.const(training), "epsilon": ctx.const(eps),
                                          "momentum": ctx.const(momentum),
                                          "data_format": _FORMATS[ctx.const(fmt)],
                                          "format": _FORMATS[ctx.const(fmt)]}


def rule_gelu(ctx, ins):
    # ops.GeLU in 2.10 is the tanh approximation
    return "GeLU", ins[:1], {"approximate": True}


# ops of shape arithmetic: kept only while every Reshape/BroadcastTo using them is rewritten to a
# constant shape, after which they are unreachable and removed
SHAPE_ONLY = {"Shape", "ScalarFloorDiv", "ScalarMul", "ScalarAdd", "ScalarSub"}

RULES = {
    **{op: keep for op in SHAPE_ONLY},
    # graph plumbing and ops whose 2.10 form Lite 2.0 reads as is
    "Load": keep, "UpdateState": keep, "Depend": keep, "MakeTuple": keep, "TupleGetItem": rule_tuple_get_item,
    "Reshape": rule_reshape, "Transpose": rule_transpose, "ExpandDims": keep, "Conv2D": keep,
    "Add": keep, "Sub": keep, "Rsqrt": rule_rsqrt, "Erf": keep, "Mul": keep, "Div": keep, "RealDiv": keep,
    "ReLU": keep, "Sigmoid": keep,
    # constant inputs -> attributes
    "BroadcastTo": rule_broadcast_to,
    "Concat": rule_concat,
    "MatMul": rule_matmul,
    "BatchMatMul": rule_batch_matmul,
    "MatMulExt": rule_matmul_ext,
    "BiasAdd": rule_bias_add,
    "Softmax": rule_softmax,
    "StridedSlice": rule_strided_slice,
    "ReduceMean": _reduce("ReduceMean"),
    "ReduceSum": _reduce("ReduceSum"),
    "SumExt": rule_sum_ext,
    "Muls": _scalar_op("Mul"),
    "Divs": _scalar_op("RealDiv"),
    "Gather": rule_gather,
    "LayerNorm": rule_layer_norm,
    "BatchNorm": rule_batch_norm,
    "GeLU": rule_gelu,
}


def rewrite(model):
    if model.mind_ir_version <= 1:
        return model
    ctx = Ctx(model)
    ctx.infer()
    prims = ctx.prims
    unknown = sorted({prims[n.op_type[5:]].op_type for n in model.graph.node
                      if n.op_type.startswith("REF::") and prims[n.op_type[5:]].op_type not in RULES})
    if unknown:
        raise CompatError("ops not in the Lite 2.0 compat table: " + ", ".join(unknown))
    for fn in model.functions:
        if len(fn.node):
            raise CompatError("MindIR with sub-graphs (functions) is not handled")
    for n in list(model.graph.node):
        if n.op_type == "Constant":
            continue
        if not n.op_type.startswith("REF::"):
            raise CompatError(f"node {n.name} has non-primitive op_type {n.op_type}")
        prim = prims[n.op_type[5:]]
        ctx.node = n
        try:
            res = RULES[prim.op_type](ctx, list(n.input))
        except CompatError as e:
            raise CompatError(f"{prim.op_type} ({n.name}): {e}") from None
        except ValueError:
            raise CompatError(f"{prim.op_type} ({n.name}): unexpected inputs ({len(n.input)})") from None
        if res is None:
            continue
        op, ins, attrs = res
        del n.input[:]
        n.input.extend(ins)
        n.op_type = "REF::" + ctx.prim_for(op, prim, attrs).name
    # constants first, new CNodes right before the node that needed them; then drop nodes the graph
    # output no longer reaches (e.g. the Shape -> TupleGetItem -> MakeTuple chains)
    nodes = list(ctx.new_nodes)
    for n in model.graph.node:
        nodes.extend(ctx.before.get(n.name, []))
        nodes.append(n)
    prod = {o: n for n in nodes for o in n.output}
    live, stack = set(), [o.name for o in model.graph.output]
    while stack:
        v = stack.pop()
        n = prod.get(v)
        if n is None or n.name in live:
            continue
        live.add(n.name)
        stack.extend(n.input)
    nodes = [n for n in nodes if n.name in live]
    left = sorted({ctx.prim_type(n) for n in nodes if n.name in ctx.orig and ctx.prim_type(n) in SHAPE_ONLY})
    if left:
        raise CompatError("shape computation left in the graph after the rewrite (Lite 2.0 cannot run it): "
                          + ", ".join(left))
    used = {n.op_type[5:] for n in nodes if n.op_type.startswith("REF::")}
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.primitives.extend(ctx.new_prims.values())
    keep_prims = [p for p in model.primitives if p.name in used]
    del model.primitives[:]
    model.primitives.extend(keep_prims)
    model.mind_ir_version = 1
    return model


def convert_file(src, dst):
    """Rewrite the MindIR ``src`` for Lite 2.0 into ``dst`` (written whole or not at all)."""
    model = read_model(src)
    rewrite(model)
    write_model(model, dst)
    return dst

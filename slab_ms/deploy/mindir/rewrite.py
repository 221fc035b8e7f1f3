"""Rewrite a MindIR written by MindSpore 2.10 (mind_ir_version 3) into the form MindSpore Lite 2.0
accepts (mind_ir_version 1): op settings that 2.10 passes as constant inputs become primitive
attributes, and ops Lite 2.0 does not know are mapped to their 2.0 equivalents
(``export.py --mindir-compat 2.0`` calls :func:`convert_file`).

The rewrite is a table, RULES (rules.py): one entry per op type. An op not in the table is a
one-line error. Shapes are inferred at batch 1 and 2 (shapes.py) so that reshapes computed in the
graph become constants with -1 for the batch (Lite 2.0 cannot run 2.10's Shape ops), and a few
forms Lite 2.0's CPU kernels get wrong are rewritten (see the rules' docstrings). A BiasAdd after a
MatMul or Conv2D becomes their bias input (:func:`_fold_bias_adds`), and the project's exact GELU
one GeLU kernel (:func:`_fuse_gelus`).
"""
import struct

from ...layers.common import GELU_LOGIT_COEFFS
from .context import GraphContext
from .errors import CompatError
from .proto import is_primitive_call, primitive_name, primitive_ref, read_model, write_model
from .rules import RULES, SHAPE_ONLY


def rewrite(model):
    """Rewrite the ModelProto ``model`` in place for Lite 2.0 and return it (a model already in
    the 2.0 form, mind_ir_version 1 or less, is returned as it is)."""
    if model.mind_ir_version <= 1:
        return model
    ctx = GraphContext(model)
    _check_supported(model, ctx)
    for node in list(model.graph.node):
        if node.op_type != "Constant":
            _apply_rule(ctx, node)
    nodes = _new_node_order(model, ctx)
    _fold_bias_adds(ctx, nodes, model.graph.output)
    _fuse_gelus(ctx, nodes, model.graph.output)
    nodes = _reachable(nodes, model.graph.output)
    _check_no_shape_computation_left(ctx, nodes)
    _replace_nodes(model, ctx, nodes)
    model.mind_ir_version = 1
    return model


def convert_file(src, dst):
    """Rewrite the MindIR ``src`` for Lite 2.0 into ``dst`` (written whole or not at all)."""
    model = read_model(src)
    rewrite(model)
    write_model(model, dst)
    return dst


def _check_supported(model, ctx):
    unknown = sorted({ctx.primitives[primitive_name(n)].op_type for n in model.graph.node
                      if is_primitive_call(n) and ctx.primitives[primitive_name(n)].op_type not in RULES})
    if unknown:
        raise CompatError("ops not in the Lite 2.0 compat table: " + ", ".join(unknown))
    for function in model.functions:
        if len(function.node):
            raise CompatError("MindIR with sub-graphs (functions) is not handled")


def _apply_rule(ctx, node):
    """Rewrite one CNode by the rule of its op type."""
    if not is_primitive_call(node):
        raise CompatError(f"node {node.name} has non-primitive op_type {node.op_type}")
    primitive = ctx.primitives[primitive_name(node)]
    ctx.current = node
    try:
        result = RULES[primitive.op_type](ctx, list(node.input))
    except CompatError as e:
        raise CompatError(f"{primitive.op_type} ({node.name}): {e}") from None
    except ValueError:  # a rule unpacks the inputs it expects
        raise CompatError(f"{primitive.op_type} ({node.name}): unexpected inputs ({len(node.input)})") from None
    if result is None:
        return
    op, inputs, attrs = result
    del node.input[:]
    node.input.extend(inputs)
    node.op_type = primitive_ref(ctx.primitive(op, primitive, attrs))


class _Index:
    """Who produces each value of ``nodes``, how many nodes (and graph outputs) read it, and each
    node's op type as it stands (after the rules) and as read."""

    def __init__(self, ctx, nodes, graph_outputs):
        self.ctx = ctx
        self.primitives = dict(ctx.primitives)
        self.primitives.update((p.name, p) for p in ctx.new_primitives.values())
        self.producers = {out: n for n in nodes for out in n.output}
        self.readers = {}
        for n in nodes:
            for name in n.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        for out in graph_outputs:
            self.readers[out.name] = self.readers.get(out.name, 0) + 1

    def op_of(self, node):
        return self.primitives[primitive_name(node)].op_type if node is not None and is_primitive_call(node) else None

    def original(self, name, ops, inputs=2):
        """The node producing ``name`` when its op in the input file is one of ``ops`` with ``inputs``
        inputs, else None."""
        node = self.producers.get(name)
        if node is None or node.name not in self.ctx.original or self.ctx.original_op(node) not in ops:
            return None
        return node if len(self.ctx.original_inputs(node)) == inputs else None


# ops whose Lite 2.0 kernel adds a bias given as a third input (MatMul runs as MatMulFusion, Conv2D as
# Conv2DFusion); BiasAdd over their channel dim (1, NCHW) folds into them
BIAS_TAKERS = ("MatMul", "Conv2D")


def _fold_bias_adds(ctx, nodes, graph_outputs):
    """BiasAdd(MatMul(x, w), b) becomes MatMul(x, w, b), and BiasAdd(Conv2D(x, w), b) Conv2D(x, w, b),
    where the BiasAdd alone reads the product: Lite 2.0 runs the bias inside the MatMul or conv
    kernel instead of as one more pass over the output (every nn.Dense and biased conv exports
    as such a pair; bench/bench_lite_ort.py measured the separate BiasAdd kernels at about 5% of a
    model's time). The BiasAdd node takes the product's primitive and inputs; the product's node is
    then unreachable and dropped. Values are unchanged (the same sum, in the kernel)."""
    index = _Index(ctx, nodes, graph_outputs)
    for node in nodes:
        if index.op_of(node) != "BiasAdd" or ctx.original_op(node) != "BiasAdd":
            continue
        product, bias, data_format = ctx.original_inputs(node)
        producer = index.producers.get(product)
        if index.op_of(producer) not in BIAS_TAKERS or index.readers.get(product) != 1 or len(producer.input) != 2:
            continue
        if ctx.constant(data_format) != 0:   # NCHW: the bias runs along dim 1, as in both kernels
            continue
        if index.op_of(producer) == "MatMul" and ctx.rank(product) != 2:
            continue
        inputs = list(producer.input) + [bias]
        del node.input[:]
        node.input.extend(inputs)
        node.op_type = producer.op_type


def _float_constant(ctx, name):
    """The value of a float scalar Constant (a Python float or a one-element float32 tensor), else None."""
    node = ctx.constants.get(name)
    if node is None:
        return None
    value = ctx.constant(name)
    if isinstance(value, float):
        return value
    tensors = getattr(value, "tensors", None)
    if tensors and len(tensors) == 1 and tensors[0].data_type == 1 and not list(tensors[0].dims):
        t = tensors[0]
        if len(t.raw_data) == 4:
            return struct.unpack("<f", t.raw_data)[0]
        if len(t.float_data) == 1:
            return float(t.float_data[0])
    return None


def _equals(ctx, name, value):
    """Whether ``name`` is a float scalar Constant equal to ``value`` in float32."""
    got = _float_constant(ctx, name)
    return got is not None and struct.pack("<f", got) == struct.pack("<f", value)


def _other(names, known):
    """The input of a two-input op that is not ``known`` (None if neither or both are)."""
    a, b = names
    return b if a == known and b != known else a if b == known and a != known else None


def _fuse_gelus(ctx, nodes, graph_outputs):
    """The exact GELU of slab_ms.layers.GELU, ``x * sigmoid(x * Q(x*x))`` with the polynomial ``Q`` of
    GELU_LOGIT_COEFFS in Horner form (9 Mul, 6 Add and a Sigmoid, each a pass over the MLP's widest
    tensor), becomes Lite 2.0's GeLU kernel with approximate=False (the erf GELU, in one pass):
    bench/bench_lite_ort.py's profiles had these passes as most of Lite's Mul and Add time. Only the
    exact chain is matched: the same x throughout, each coefficient equal to GELU_LOGIT_COEFFS in
    float32, every intermediate read by the chain alone. The last Mul takes GeLU and x; the rest is
    then unreachable and dropped. Both compute the erf GELU to float32 accuracy (the polynomial is
    within 5.9e-7 of it)."""
    coeffs = list(GELU_LOGIT_COEFFS)
    index = _Index(ctx, nodes, graph_outputs)
    product = ("Mul", "Muls")
    for node in nodes:
        if not node.output or index.original(node.output[0], ("Mul",)) is not node:
            continue
        chain = _gelu_input(ctx, index, node, coeffs, product)
        if chain is None:
            continue
        del node.input[:]
        node.input.append(chain)
        node.op_type = primitive_ref(ctx.primitive("GeLU", None, {"approximate": False}))


def _gelu_input(ctx, index, node, coeffs, product):
    """``x`` when ``node`` is the last Mul of the exact-GELU chain on ``x``, else None."""
    a, b = ctx.original_inputs(node)
    for x, gate in ((a, b), (b, a)):
        sigmoid = index.original(gate, ("Sigmoid",), inputs=1)
        if sigmoid is None or index.readers.get(gate) != 1:
            continue
        logit = ctx.original_inputs(sigmoid)[0]
        times_x = index.original(logit, ("Mul",))
        if times_x is None or index.readers.get(logit) != 1:
            continue
        q = _other(ctx.original_inputs(times_x), x)
        if q is not None and _is_logit_polynomial(ctx, index, q, x, coeffs, product):
            return x
    return None


def _is_logit_polynomial(ctx, index, q, x, coeffs, product):
    """Whether ``q`` is Horner's ``((c6 * s + c5) * s + ... ) * s + c0`` with ``s = x * x``."""
    square = None
    for k, c in enumerate(coeffs[:-1]):   # q_k = q_{k+1} * s + c_k, from the constant term up
        add = index.original(q, ("Add",))
        if add is None or index.readers.get(q) != 1:
            return False
        term, const = ctx.original_inputs(add)
        if not _equals(ctx, const, c):
            term, const = const, term
            if not _equals(ctx, const, c):
                return False
        mul = index.original(term, product)
        if mul is None or index.readers.get(term) != 1:
            return False
        u, v = ctx.original_inputs(mul)
        if k == len(coeffs) - 2:   # the innermost product: s * c_last
            s, c_last = (u, v) if _equals(ctx, v, coeffs[-1]) else (v, u)
            if not _equals(ctx, c_last, coeffs[-1]) or (square is not None and s != square):
                return False
            square = s
            break
        if square is None:   # s is the operand that is x * x
            square = u if _is_square(ctx, index, u, x) else v
        q = _other((u, v), square)
        if q is None:
            return False
    return _is_square(ctx, index, square, x) and index.readers.get(square) == len(coeffs) - 1


def _is_square(ctx, index, name, x):
    mul = index.original(name, ("Mul",))
    return mul is not None and list(ctx.original_inputs(mul)) == [x, x]


def _new_node_order(model, ctx):
    """The new constants first, then the graph's nodes, each right after the CNodes inserted for it."""
    nodes = list(ctx.new_constants)
    for node in model.graph.node:
        nodes.extend(ctx.inserted_before.get(node.name, []))
        nodes.append(node)
    return nodes


def _reachable(nodes, graph_outputs):
    """``nodes`` without those the graph outputs no longer reach (e.g. the Shape -> TupleGetItem ->
    MakeTuple chains the Reshape rule replaced by constants)."""
    producers = {out: n for n in nodes for out in n.output}
    live, stack = set(), [o.name for o in graph_outputs]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in live:
            continue
        live.add(node.name)
        stack.extend(node.input)
    return [n for n in nodes if n.name in live]


def _check_no_shape_computation_left(ctx, nodes):
    # the new constants are not in ctx.original
    left = sorted({ctx.original_op(n) for n in nodes if n.name in ctx.original and ctx.original_op(n) in SHAPE_ONLY})
    if left:
        raise CompatError("shape computation left in the graph after the rewrite (Lite 2.0 cannot run it): "
                          + ", ".join(left))


def _replace_nodes(model, ctx, nodes):
    """The graph's nodes become ``nodes``; the primitives, old and new, are those they use."""
    used = {primitive_name(n) for n in nodes if is_primitive_call(n)}
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.primitives.extend(ctx.new_primitives.values())
    kept = [p for p in model.primitives if p.name in used]
    del model.primitives[:]
    model.primitives.extend(kept)

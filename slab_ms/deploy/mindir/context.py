"""GraphContext: what the rules look up in the graph (constants, producers, original op types and
inputs, inferred shapes) and what they add to it (primitives, CNodes, Constant nodes)."""
import struct

from .errors import CompatError
from .proto import (AttributeProto, NodeProto, PrimitiveProto, TensorProto, constant_value, encode_attribute,
                    is_primitive_call, primitive_name, primitive_ref, recorded_shape)
from .shapes import TensorValue, infer_values, merge_batch


class GraphContext:
    """The graph of a model being rewritten, and the nodes and primitives the rewrite adds to it."""

    def __init__(self, model):
        self.model = model
        graph = model.graph
        self.primitives = {p.name: p for p in model.primitives}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
        self.producers = {out: n for n in graph.node for out in n.output}
        self.parameters = {p.name: p for p in graph.parameter}
        self.graph_inputs = {i.name: i for i in graph.input}
        # node name -> (op type, input names) as in the input file, before any rule ran
        self.original = {n.name: (self.primitives[primitive_name(n)].op_type if is_primitive_call(n) else n.op_type,
                                  list(n.input)) for n in graph.node}
        self.new_constants = []  # Constant nodes to insert before every CNode
        self.new_primitives = {}  # signature -> PrimitiveProto
        self.inserted_before = {}  # node name -> new CNodes to insert right before it
        self.current = None  # the node a rule is rewriting
        self._counter = 0  # numbers the new nodes
        self.values_at_batch1 = infer_values(self, 1)
        self.values_at_batch2 = infer_values(self, 2)

    # ---------------------------------------------------------------- the graph as read
    def original_op(self, node):
        """The node's op type in the input file (before any rewrite)."""
        return self.original[node.name][0]

    def original_inputs(self, node):
        return self.original[node.name][1]

    def constant(self, name):
        """The Python value of the Constant node that produces ``name``."""
        if name not in self.constants:
            raise CompatError(f"input {name} is not a constant")
        return constant_value(self.constants[name])

    def rank(self, name):
        """Rank of a value from its producer's 'shape' attribute or a parameter/input."""
        if name in self.parameters:
            return len(self.parameters[name].dims)
        if name in self.graph_inputs:
            return len(self.graph_inputs[name].tensor[0].dims)
        node = self.producers.get(name)
        if node is not None:
            shape = recorded_shape(node)
            if shape is not None:
                return len(shape)
        raise CompatError(f"unknown rank of {name}")

    def shape(self, name):
        """Shape of a tensor value, -1 for dims that follow the batch."""
        at1, at2 = self.values_at_batch1.get(name), self.values_at_batch2.get(name)
        if isinstance(at1, TensorValue) and isinstance(at2, TensorValue) and len(at1.shape) == len(at2.shape):
            return merge_batch(at1.shape, at2.shape)
        if name in self.parameters:
            return [int(d) for d in self.parameters[name].dims]
        if name in self.graph_inputs:
            return [int(d) for d in self.graph_inputs[name].tensor[0].dims]
        shape = recorded_shape(self.producers[name])
        if shape is None:
            raise CompatError(f"no static output shape recorded for {name}")
        return shape

    # ---------------------------------------------------------------- what the rewrite adds
    def primitive(self, op, base, attrs):
        """A primitive of type op with base's attributes (input_names dropped) plus attrs; one per
        distinct (op, base, attrs)."""
        signature = (op, base.name if base is not None else "", tuple(sorted((k, repr(v)) for k, v in attrs.items())))
        if signature not in self.new_primitives:
            prim = PrimitiveProto()
            prim.op_type = op
            prim.name = f"{op}:compat{len(self.new_primitives)}"
            if base is not None:
                prim.instance_name = base.instance_name
                prim.prim_type = base.prim_type
                for attr in base.attribute:
                    if attr.name not in set(attrs) | {"input_names"}:
                        prim.attribute.append(attr)
            else:
                prim.instance_name = ""
                prim.prim_type = PrimitiveProto.PRIMITIVE_FUNCTION
            for k, v in attrs.items():
                prim.attribute.append(encode_attribute(k, v))
            self.new_primitives[signature] = prim
        return self.new_primitives[signature]

    def insert_node(self, op, inputs, attrs, out_shape):
        """New float32 CNode inserted before the node being rewritten; returns its output name."""
        self._counter += 1
        name = f"{self.current.name}_compat{self._counter}"
        node = NodeProto(name=name, op_type=primitive_ref(self.primitive(op, None, attrs)))
        node.input.extend(inputs)
        node.output.append(name)
        node.domain = self.current.domain + f"/compat{self._counter}"
        attr = node.attribute.add()
        attr.name, attr.type = "shape", AttributeProto.TENSORS
        tensor = attr.tensors.add()
        tensor.dims.extend(out_shape)
        tensor.data_type = TensorProto.FLOAT
        self.inserted_before.setdefault(self.current.name, []).append(node)
        self.producers[name] = node
        self.original[name] = (op, list(inputs))
        return name

    def int_tuple_constant(self, values):
        """A new Constant of a tuple of ints; returns its output name."""
        node, name = self._new_constant()
        node.attribute.append(encode_attribute("value", tuple(int(v) for v in values)))
        return name

    def int32_tensor_constant(self, values):
        """A new Constant of a 1-D int32 tensor; returns its output name."""
        return self._tensor_constant(TensorProto.INT32, [len(values)], struct.pack(f"<{len(values)}i", *values))

    def float_scalar_constant(self, value):
        """A new Constant of a 0-D float32 tensor; returns its output name."""
        return self._tensor_constant(TensorProto.FLOAT, [], struct.pack("<f", value))

    def _new_constant(self):
        """A new Constant node (added before every CNode) and its output name."""
        self._counter += 1
        name = f"CompatConst_{self._counter}"
        node = NodeProto(name=name, op_type="Constant")
        node.output.append(name)
        self.new_constants.append(node)
        return node, name

    def _tensor_constant(self, data_type, dims, raw):
        node, name = self._new_constant()
        attr = node.attribute.add()
        attr.name, attr.type = "value", AttributeProto.TENSORS
        tensor = attr.tensors.add()
        tensor.data_type = data_type
        tensor.dims.extend(dims)
        tensor.name = "value0"
        tensor.raw_data = raw
        return name

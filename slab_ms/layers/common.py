"""Small building blocks shared by every family: MLP, stochastic depth, initializers."""
import functools
import os

import mindspore as ms
from mindspore import lazy_inline, nn, ops
from mindspore.common import initializer as init


def shared_graph(init_fn):
    """Decorate a cell's ``__init__`` so that GRAPH_MODE builds its front-end graph once for all
    instances made with the same arguments (MindSpore's ``lazy_inline``, ``policy="front"``: the
    shared graph is inlined again before the backend, so kernels, results and exported MindIR are
    unchanged). It cuts the first call of a training step, most of which is front-end
    compilation of the many identical norms, attentions and MLPs (README, Training cost).

    Only for cells whose graph depends on nothing but their constructor arguments and sub-cells.
    An instance holding a random op (dropout, drop path) keeps a graph of its own: instances
    sharing one would share its seed and draw the same masks. Decorate the concrete class: the
    key is the class name and the arguments of the outermost decorated ``__init__``. Within one
    network, every call of such cells passes the same number of arguments (``attn(x, None)``,
    not ``attn(x)`` at some call sites) with the same shapes: the shared graph has one
    signature. Instances that break this get a key of their own with :func:`graph_site`.

    ``SLAB_MS_SHARED_GRAPHS=0`` in the environment when a cell is built turns this off (every
    instance compiled on its own, as MindSpore does by default).
    """
    lazy_init = lazy_inline(init_fn, policy="front")

    @functools.wraps(init_fn)
    def __init__(self, *args, **kwargs):
        if os.environ.get("SLAB_MS_SHARED_GRAPHS", "1") == "0":
            init_fn(self, *args, **kwargs)
            return
        lazy_init(self, *args, **kwargs)
        if any(isinstance(c, (nn.Dropout, DropPath)) for _, c in self.cells_and_names()):
            graph_site(self, f"instance {id(self)}")

    return __init__


def graph_site(cell, site):
    """Give a :func:`shared_graph` cell a key of its own ``site`` and return it; a no-op for other
    cells. Within one network, instances sharing a key must be called with inputs of the same
    shapes and kinds (a tensor or None): MindSpore 2.10 sometimes keeps one call's shapes for the
    other (``reshape(x.shape)`` compiled with the wrong shape: once in CI, once in 96 compiles of
    a stress loop; README, Training cost). Models mark the exceptions, such as a Swin
    patch-merging norm, which has the width of the blocks two stages on but four times their
    tokens; ``tests/test_layers.py`` checks that no key of any model sees two input shapes."""
    if shared_graph_key(cell):
        cell.cell_init_args += f"[{site}]"
    return cell


def shared_graph_key(cell):
    """The key under which ``cell`` shares its front-end graph (see :func:`shared_graph`), or None."""
    key = getattr(cell, "cell_init_args", None)
    return key if isinstance(key, str) and key.startswith("lazy_inline_") else None


# logit(Phi(x)) ~= x * Q(x^2), Q(s) = sum_i GELU_LOGIT_COEFFS[i] * s^i: printed by scripts/fit_gelu.py.
GELU_LOGIT_COEFFS = (1.595768985e+00, 7.266782261e-02, -6.590944923e-05, -1.105559063e-04, 7.946229665e-06,
                     -2.672939415e-07, 3.618731223e-09)


class GELU(nn.Cell):
    """Exact (erf) GELU, ``x * Phi(x)`` as ``torch.nn.GELU()``, with its exact gradient
    ``Phi(x) + x * phi(x)``.

    ``Phi`` is computed as ``sigmoid(x * Q(x^2))`` with ``Q`` fitted to ``logit(Phi)``
    (``scripts/fit_gelu.py``). In float32 the GELU is within 5.9e-7 of the float64 GELU on
    [-12, 12], where torch's own float32 GELU is within 1.1e-6, and it saturates to ``x`` and
    ``-0`` beyond. Two reasons not to use MindSpore's ``nn.GELU(approximate=False)``:

    - speed: MindSpore's CPU Erf is a scalar loop whose cost grows with ``|x|``, while these
      multiplies, adds and one sigmoid are vectorized (``bench/profile_ops.py``: about 8 ms against
      12-22 ms on a stage-1 hidden tensor of slab_swin_tiny); the ops also export to ONNX and
      MindIR as they are;
    - memory: the gradient is written out here (``bprop``) so that a training step keeps only
      ``x`` per GELU. With MindSpore's erf GELU (a composite that autodiff expands), our Swin-T
      training step held 1.7 GB more at batch 8 than with the tanh GELU (README, Training cost).
    """

    def __init__(self):
        super().__init__()
        self.coeffs = GELU_LOGIT_COEFFS
        self.inv_sqrt_2pi = 0.3989422804014327

    def cdf(self, x):
        """``Phi(x)``, the standard normal CDF, to float32 accuracy."""
        s = x * x
        q = s * self.coeffs[-1] + self.coeffs[-2]
        for c in self.coeffs[-3::-1]:   # Horner, down to the constant term
            q = q * s + c
        return ops.sigmoid(x * q)

    def construct(self, x):
        if x.dtype == ms.float32:
            return x * self.cdf(x)
        xf = x.astype(ms.float32)   # float16/bfloat16 under AMP: x^12 of the polynomial needs float32
        return (xf * self.cdf(xf)).astype(x.dtype)

    def bprop(self, x, out, dout):
        xf = x.astype(ms.float32) if x.dtype != ms.float32 else x
        pdf = ops.exp(xf * xf * -0.5) * self.inv_sqrt_2pi
        grad = dout.astype(ms.float32) * (self.cdf(xf) + xf * pdf)
        return (grad.astype(x.dtype),)


GELU_KINDS = ("exact", "tanh")


def check_gelu(gelu):
    """``gelu`` if it names a GELU of :class:`Mlp`, else a ValueError saying which do."""
    if gelu not in GELU_KINDS:
        raise ValueError(f"gelu must be one of {', '.join(GELU_KINDS)}, got {gelu!r}")
    return gelu


class Mlp(nn.Cell):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, as timm's Mlp. The GELU is the exact (erf) one,
    as upstream's, or with ``gelu="tanh"`` MindSpore's default ``nn.GELU()``, the tanh
    approximation that the SLAB authors' MindSpore port computes (for its checkpoint's logits)."""

    @shared_graph
    def __init__(self, in_features, hidden_features=None, out_features=None, drop=0.0, gelu="exact"):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Dense(in_features, hidden_features)
        self.act = GELU() if check_gelu(gelu) == "exact" else nn.GELU(approximate=True)
        self.fc2 = nn.Dense(hidden_features, out_features)
        self.drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()

    def construct(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Cell):
    """Stochastic depth per sample (timm's ``drop_path``): zero a residual branch with
    probability ``drop_prob`` and rescale the kept ones by ``1 / (1 - drop_prob)``."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.keep_prob = 1.0 - drop_prob

    def construct(self, x):
        if not self.training or self.keep_prob == 1.0:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        # timm scales the (B, 1, ...) mask, not x: one full-size multiply forward and backward
        mask = ops.floor(self.keep_prob + ops.rand(shape, dtype=ms.float32)) / self.keep_prob
        return x * cast_back(ops.stop_gradient(mask), x.dtype)


def chunk_last(t, parts):
    """``parts`` equal slices of the last axis: ``t.reshape(..., parts, c)[..., i, :]`` for each i.

    The same values as indexing the reshaped tensor, but as contiguous range slices: MindSpore's
    CPU StridedSlice takes ~9 ms to pick one index of a middle axis of a stage-1 qkv (1x3136x3x96)
    and ~0.3 ms for the equivalent last-axis range (``bench/profile_ops.py``)."""
    c = t.shape[-1] // parts
    out = ()
    for i in range(parts):
        out = out + (t[..., i * c:(i + 1) * c],)
    return out


def as_float32(x):
    """``x`` in float32 (no Cast node when it already is)."""
    return x if x.dtype == ms.float32 else x.astype(ms.float32)


def cast_back(x, dtype):
    """``x`` as ``dtype`` (no Cast node when it already is)."""
    return x if x.dtype == dtype else x.astype(dtype)


def drop_path_rates(drop_path_rate, total_depth):
    """Linearly increasing stochastic depth over all blocks (``torch.linspace`` rule)."""
    if total_depth == 1:
        return [0.0]
    return [drop_path_rate * i / (total_depth - 1) for i in range(total_depth)]


def init_weights_trunc_normal(net, std=0.02):
    """timm/upstream init: Dense weights ~ trunc_normal(std), Dense biases 0."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.Dense):
            cell.weight.set_data(init.initializer(init.TruncatedNormal(std), cell.weight.shape, cell.weight.dtype))
            if cell.bias is not None:
                cell.bias.set_data(init.initializer(init.Zero(), cell.bias.shape, cell.bias.dtype))


# Parameters that get no weight decay besides every 1-D one (biases, norm affines, RepBN alpha):
# position tables and tokens, as upstream's no_weight_decay / no_weight_decay_keywords.
NO_DECAY_KEYWORDS = ("relative_position_bias_table", "positional_encoding", "absolute_pos_embed", "pos_embed",
                     "cls_token", "alpha")


def no_weight_decay_names(net, keywords=NO_DECAY_KEYWORDS):
    """Names of the trainable parameters to exempt from weight decay (mindcv's ``no_weight_decay``)."""
    return {p.name for p in net.trainable_params()
            if len(p.shape) <= 1 or any(k in p.name for k in keywords)}

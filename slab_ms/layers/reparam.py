"""Re-parameterization (SLAB Lemma 4.1, SPEC section 3): fold an eval-mode RepBN/PRepBN into
the adjacent linear map, as timm's ``reparameterize()`` does for its re-parameterizable blocks.

In eval mode a RepBN is a per-channel affine map ``RepBN(x) = a * x + b`` with
``a = gamma / sqrt(var + eps) + alpha`` and ``b = beta - mean * gamma / sqrt(var + eps)``.
Next to a linear layer it disappears:

- norm before the layer, ``y = W (a x + b) + c``:  ``W' = W diag(a)``, ``c' = W b + c``
  (for a conv, ``a`` scales its input channels and ``W b`` sums over the kernel too, which is
  exact only without zero padding: a padded border would see ``0``, not ``b``);
- norm after the layer, ``y = a (W x + c) + b``:   ``W' = diag(a) W``, ``c' = a c + b``.

The second form keeps the ``a * c`` term whole: ``a`` includes ``alpha``, so the bias of the
layer before the norm is scaled by ``gamma / std + alpha``. (Upstream's patch-embedding fold
scales it by ``gamma / std`` only and drops ``alpha * c``.) Folds are computed in float64.

Every model module that owns a RepBN next to a linear map has a ``reparameterize()`` method
that calls ``fold_norm`` and replaces the norm by ``nn.Identity``; ``reparameterize(net)``
walks the tree once and calls them.
"""
from __future__ import annotations

import time

import numpy as np
from mindspore import Parameter, Tensor, nn

from .prepbn import PRepBN, RepBN


def norm_affine(norm):
    """``(a, b)`` in float64 with ``norm(x) == a * x + b`` in eval mode, for RepBN or PRepBN."""
    if isinstance(norm, PRepBN):
        norm = norm.norm2   # PRepBN's eval form is its RepBN
    if not isinstance(norm, RepBN):
        raise TypeError(f"only RepBN/PRepBN fold into a linear map, got {type(norm).__name__}")
    bn = norm.bn
    f = {k: getattr(bn, k).asnumpy().astype(np.float64) for k in ("gamma", "beta", "moving_mean", "moving_variance")}
    inv_std = 1.0 / np.sqrt(f["moving_variance"] + bn.eps)
    scale = f["gamma"] * inv_std
    return scale + float(norm.alpha.asnumpy()[0]), f["beta"] - f["moving_mean"] * scale


def fold_norm(norm, layer, side):
    """Return ``layer`` (nn.Dense or nn.Conv2d) with the eval-mode ``norm`` folded in.

    ``side='before'``: the norm feeds the layer's input (a Dense, or an unpadded, ungrouped
    Conv2d such as PVT's spatial reduction). ``side='after'``: the norm is applied to the
    layer's output channels. A bias is added where the layer had none.
    """
    a, b = norm_affine(norm)
    w = layer.weight.asnumpy().astype(np.float64)
    has_bias = getattr(layer, "has_bias", False) and layer.bias is not None
    c = layer.bias.asnumpy().astype(np.float64) if has_bias else np.zeros(w.shape[0])
    if side == "before":
        if isinstance(layer, nn.Conv2d):
            padded = layer.pad_mode == "same" or any(int(p) for p in np.ravel(layer.padding))
            if layer.group != 1 or padded:
                raise ValueError("a norm before a conv folds only into an unpadded, ungrouped conv")
            shape = (1, -1) + (1,) * (w.ndim - 2)
            new_w = w * a.reshape(shape)
            new_c = (w * b.reshape(shape)).reshape(w.shape[0], -1).sum(axis=1) + c
        elif isinstance(layer, nn.Dense):
            new_w, new_c = w * a[None, :], w @ b + c
        else:
            raise TypeError(f"cannot fold a norm into {type(layer).__name__}")
    elif side == "after":
        new_w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
        new_c = a * c + b
    else:
        raise ValueError(f"side must be 'before' or 'after', got {side!r}")
    dtype = layer.weight.dtype
    if isinstance(layer, nn.Dense) and not has_bias:
        layer = nn.Dense(w.shape[1], w.shape[0], has_bias=True)
    layer.weight.set_data(Tensor(new_w.astype(np.float32), dtype))
    if layer.bias is None:
        layer.bias = Parameter(Tensor(new_c.astype(np.float32), dtype), name="bias")
        layer.has_bias = True
    else:
        layer.bias.set_data(Tensor(new_c.astype(np.float32), dtype))
    return layer


def is_foldable(norm):
    return isinstance(norm, (RepBN, PRepBN))


def fold_norm_into(norm, owner, names):
    """Fold ``norm`` into every layer ``owner.<name>`` that reads its output (e.g. PVT's ``q``
    and ``kv``), replacing each layer. Returns False, changing nothing, if ``norm`` cannot fold;
    the caller then removes the norm."""
    if not is_foldable(norm):
        return False
    for name in names:
        setattr(owner, name, fold_norm(norm, getattr(owner, name), "before"))
    return True


def reparameterize(net: nn.Cell) -> nn.Cell:
    """Fold every RepBN/PRepBN of ``net`` into its neighbouring linear map, in place, and put
    ``net`` in eval mode (a fused network is for inference only). Returns ``net``.

    Calls ``reparameterize()`` on every sub-cell that has one (one walk, children first), then
    renames the parameters after their new places so the fused network saves and compiles.
    """
    if getattr(net, "reparameterized", False):
        return net
    cells = [cell for _, cell in net.cells_and_names()]
    for cell in reversed(cells):   # children before parents
        fn = getattr(cell, "reparameterize", None)
        if callable(fn):
            fn()
    for name, param in net.parameters_and_names():
        param.name = name
    # MindSpore caches a compiled graph per cell under (id, creation time, argument shapes) and
    # does not notice replaced sub-cells: a network that already ran would keep running its
    # unfused graph with the folded weights. A new creation time makes every cell recompile.
    stamp = time.time_ns()
    for _, cell in net.cells_and_names():
        object.__setattr__(cell, "_create_time", stamp)
    net.reparameterized = True
    net.set_train(False)
    return net


def remaining_norms(net: nn.Cell) -> list[str]:
    """Names of the norm cells (RepBN, PRepBN, BatchNorm, LayerNorm) still in ``net``."""
    from .prepbn import TokenBatchNorm
    kinds = (RepBN, PRepBN, TokenBatchNorm, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)
    return [name for name, cell in net.cells_and_names() if isinstance(cell, kinds)]

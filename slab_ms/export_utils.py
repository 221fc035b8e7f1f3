"""Export helpers: ONNX-compatible replacements for ops MindSpore's ONNX exporter lacks."""
import numpy as np
import mindspore as ms
from mindspore import nn, ops


class ErfGELU(nn.Cell):
    """Exact-form GELU ``0.5 x (1 + erf(x / sqrt 2))`` with erf from Abramowitz & Stegun 7.1.26
    (absolute error below 1.5e-7), built from ops the ONNX exporter supports (it has no Erf
    and no Sign). Used only when exporting ONNX; MindIR keeps MindSpore's own GELU."""

    def construct(self, x):
        z = x * 0.7071067811865476
        a = ops.abs(z)
        t = ops.div(ops.ones_like(a), 1.0 + 0.3275911 * a)
        poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
        erf_abs = 1.0 - poly * ops.exp(-a * a)
        erf = ops.select(z >= 0, erf_abs, -erf_abs)
        return 0.5 * x * (1.0 + erf)


def make_onnx_compatible(net):
    """Swap every ``nn.GELU`` for ``ErfGELU`` in place; returns the number swapped."""
    swapped = 0
    for _, cell in list(net.cells_and_names()):
        for attr, child in list(cell.name_cells().items()):
            if isinstance(child, nn.GELU):
                setattr(cell, attr, ErfGELU())
                swapped += 1
    return swapped

"""Where MindSpore's CPU time goes in SLAB-Swin-T, op by op against PyTorch (same shapes, same
thread count): the stage-1 shapes of a batch-1 forward (3136 tokens, 96 channels).

    python bench/profile_ops.py [--threads N]

Prints the median time of each op in MindSpore GRAPH_MODE and in PyTorch and their ratio.
"""
import argparse
import os

import slab_ms  # noqa: F401  (oneDNN ISA before MindSpore loads)
import numpy as np
import mindspore as ms
from mindspore import nn, ops
from slab_ms.layers.common import GELU, chunk_last
from timing import timed  # same directory: the benchmarks' one timing rule


def median_ms(fn, repeats=10):
    return 1000 * timed(fn, repeats)[1]


class Apply(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, x):
        return self.cell(x)


class Heads(nn.Cell):
    def construct(self, x):
        return x.reshape(1, 3136, 3, 32).transpose(0, 2, 1, 3)


class KtV(nn.Cell):
    def construct(self, x):
        return ops.matmul(x.transpose(0, 2, 1), x)


class QkvByIndex(nn.Cell):
    """q, k, v as ``qkv.reshape(1, N, 3, C)[:, :, i]`` (what the models did before 2026-11-22)."""

    def construct(self, x):
        t = x.reshape(1, 3136, 3, 96)
        return t[:, :, 0], t[:, :, 1], t[:, :, 2]


class QkvByRange(nn.Cell):
    """The same three tensors as last-axis ranges (``slab_ms.layers.common.chunk_last``)."""

    def construct(self, x):
        return chunk_last(x, 3)


class Erf(nn.Cell):
    def construct(self, x):
        return ops.erf(x)


class Exp(nn.Cell):
    def construct(self, x):
        return ops.exp(x)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    import torch
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    torch.set_num_threads(args.threads)
    cases = [
        ("Dense 96->288 (qkv)", Apply(nn.Dense(96, 288)), torch.nn.Linear(96, 288), (1, 3136, 96)),
        ("Dense 96->384 (fc1)", Apply(nn.Dense(96, 384)), torch.nn.Linear(96, 384), (1, 3136, 96)),
        ("GELU exact (erf)", Apply(nn.GELU(approximate=False)), torch.nn.GELU(), (1, 3136, 384)),
        ("GELU eval form (slab_ms GELU)", Apply(GELU()), torch.nn.GELU(), (1, 3136, 384)),
        ("erf alone", Erf(), torch.erf, (1, 3136, 384)),
        ("exp (reference op)", Exp(), torch.exp, (1, 3136, 384)),
        ("depthwise conv 5x5 (SLA dwc)", Apply(nn.Conv2d(32, 32, 5, pad_mode="pad", padding=2, group=32,
                                                        has_bias=True)),
         torch.nn.Conv2d(32, 32, 5, padding=2, groups=32), (3, 32, 56, 56)),
        ("split heads (reshape+transpose)", Heads(), lambda t: t.reshape(1, 3136, 3, 32).transpose(1, 2).contiguous(),
         (1, 3136, 96)),
        ("k^T v (batched matmul)", KtV(), lambda t: t.transpose(1, 2) @ t, (3, 3136, 32)),
        ("q,k,v by middle-axis index", QkvByIndex(),
         lambda t: [t.reshape(1, 3136, 3, 96)[:, :, i].contiguous() for i in range(3)], (1, 3136, 288)),
        ("q,k,v by last-axis range", QkvByRange(),
         lambda t: [t[..., 96 * i:96 * (i + 1)].contiguous() for i in range(3)], (1, 3136, 288)),
    ]
    print(f"{'op':34s} {'MindSpore ms':>12s} {'PyTorch ms':>11s} {'ratio':>6s}")
    with torch.no_grad():
        for name, cell, tfn, shape in cases:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            a, t = ms.Tensor(x), torch.from_numpy(x)
            m = median_ms(lambda cell=cell, a=a: [o.asnumpy() for o in cell(a)]
                          if isinstance(cell, (QkvByIndex, QkvByRange)) else cell(a).asnumpy())
            r = median_ms(lambda tfn=tfn, t=t: tfn(t))
            print(f"{name:34s} {m:12.2f} {r:11.2f} {m / r:6.1f}")


if __name__ == "__main__":
    main()

"""Re-estimate RepBN running statistics after training (SLAB paper; SPEC section 2).

Weights frozen; drop path and dropout off (their variance shift is the reason to recalibrate);
every BN normalises with batch statistics and the running statistics become the plain average
of the per-batch statistics over the data (PyTorch's ``momentum=None``), not a moving average.
"""
import numpy as np
import mindspore as ms
from mindspore import nn

from ..layers.common import DropPath
from ..layers.prepbn import TokenBatchNorm
from .schedule import prepbn_cells
from .train_step import Logits


def recalibrate_bn(net, batches, forward=None):
    """Run ``batches`` (an iterable of image tensors, or of argument tuples for ``forward``) and
    set every TokenBatchNorm's running statistics to the mean of its per-batch statistics; returns
    the number of batches used. ``forward`` wraps ``net`` (default :class:`Logits`; a language
    model passes ``lm.TokenNLL`` and ``(ids, mask)`` pairs, so padding stays out of the
    statistics). PRepBN counters (which move on training forwards) are restored afterwards: they
    record training only. In a data-parallel run each rank does its shard and the caller averages
    over ranks."""
    for cell in prepbn_cells(net):
        if cell.lam() != 0.0:
            raise ValueError("recalibrate_bn: a PRepBN schedule has not finished (lambda "
                             f"{cell.lam():.4f}); BN statistics of a mixed LN/BN network are not its eval ones")
    bns = [c for _, c in net.cells_and_names() if isinstance(c, TokenBatchNorm)]
    if not bns:
        return 0
    saved = [(c.momentum, int(c.num_batches_tracked.asnumpy())) for c in bns]
    counters = [(p, p.asnumpy().copy()) for cell in prepbn_cells(net) for p in cell.get_parameters()
                if p.dtype == ms.int64]
    sums = [[np.zeros(c.num_features, np.float64), np.zeros(c.num_features, np.float64)] for c in bns]
    runner = (forward or Logits)(net)
    net.set_train(True)
    for _, c in net.cells_and_names():   # eval behaviour everywhere but the statistics
        if isinstance(c, (DropPath, nn.Dropout)):
            c.set_train(False)
    for c in bns:
        c.momentum = 1.0   # the running statistics become this batch's statistics
    n = 0
    try:
        for x in batches:
            runner(*x) if isinstance(x, tuple) else runner(x)
            for c, s in zip(bns, sums):
                s[0] += c.moving_mean.asnumpy()
                s[1] += c.moving_variance.asnumpy()
            n += 1
    finally:
        for c, (m, _) in zip(bns, saved):
            c.momentum = m
        for p, value in counters:
            p.set_data(ms.Tensor(value))
        net.set_train(False)
    if n == 0:
        raise ValueError("recalibrate_bn: no batches")
    for c, (mean, var), (_, tracked) in zip(bns, sums, saved):
        c.moving_mean.set_data(ms.Tensor((mean / n).astype(np.float32)))
        c.moving_variance.set_data(ms.Tensor((var / n).astype(np.float32)))
        c.num_batches_tracked.set_data(ms.Tensor(np.asarray(tracked + n, np.int64)))
    return n

"""Re-estimate RepBN running statistics after training (SLAB paper; SPEC section 2).

Weights frozen; drop path and dropout off (their variance shift is the reason to recalibrate);
every BN normalises with batch statistics. Two rules for the running statistics:
- ``momentum=None`` (config ``bn_recalibrate_mode: mean``): the plain average of the per-batch
  statistics over the data (PyTorch's ``momentum=None``), for short runs and small data;
- a momentum (``bn_recalibrate_mode: upstream``: 0.1, PyTorch's convention): the moving average
  BN keeps in training, continued from the trained statistics over the given (augmented) batches,
  as upstream's ``main.py`` re-estimates them for 10 epochs.
"""
import numpy as np
import mindspore as ms
from mindspore import nn

from ..layers.common import DropPath
from ..layers.prepbn import TokenBatchNorm
from .schedule import prepbn_cells
from .train_step import Logits


UPSTREAM_MOMENTUM = 0.1   # upstream main.py's recalibration (PyTorch convention: 0.1 of each batch)


def recalibrate_bn(net, batches, forward=None, momentum=None):
    """Run ``batches`` (an iterable of image tensors, or of argument tuples for ``forward``) and
    set every TokenBatchNorm's running statistics to the mean of its per-batch statistics; returns
    the number of batches used. ``forward`` wraps ``net`` (default :class:`Logits`; a language
    model passes ``lm.TokenNLL`` and ``(ids, mask)`` pairs, so padding stays out of the
    statistics). PRepBN counters (which move on training forwards) are restored afterwards: they
    record training only. In a data-parallel run each rank does its shard and the caller averages
    over ranks. ``momentum`` (PyTorch's convention) keeps BN's moving average instead of the plain
    mean (module docstring)."""
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
    for c in bns:   # read when the runner compiles
        c.momentum = 1.0 if momentum is None else float(momentum)   # 1.0: the statistics become this batch's
    n = 0
    try:
        for x in batches:
            runner(*x) if isinstance(x, tuple) else runner(x)
            if momentum is None:
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
        if momentum is None:
            c.moving_mean.set_data(ms.Tensor((mean / n).astype(np.float32)))
            c.moving_variance.set_data(ms.Tensor((var / n).astype(np.float32)))
        c.num_batches_tracked.set_data(ms.Tensor(np.asarray(tracked + n, np.int64)))
    return n

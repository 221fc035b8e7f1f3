"""Causal language-model loss and perplexity for the LLaMA models (train.py, validate.py).

A batch is ``(input_ids, attention_mask)``, both (B, T) int32, as the text pipeline
(:mod:`slab_ms.lm.text_data`) yields them. Position ``t`` predicts token ``t + 1``; a target
counts only where the mask is 1, so padding (the tail of the last block, the rows that fill an
evaluation batch) never enters the loss or the perplexity. The mask also goes to the model,
where the final PRepBN keeps padded tokens out of its batch statistics (upstream's behaviour).
"""
import math

import numpy as np
import mindspore as ms
from mindspore import nn, ops


def _nll_sum(net, input_ids, attention_mask):
    """``(sum of the next-token NLL over unpadded targets, number of those targets)``, float32."""
    logits = net(input_ids, attention_mask)
    vocab = logits.shape[-1]
    pred = logits[:, :-1].astype(ms.float32).reshape(-1, vocab)
    target = input_ids[:, 1:].reshape(-1)
    weight = attention_mask[:, 1:].astype(ms.float32)
    nll = ops.cross_entropy(pred, target, reduction="none").reshape(weight.shape)
    return (nll * weight).sum(), weight.sum()


class CausalLMLoss(nn.Cell):
    """Mean next-token cross-entropy over the unpadded targets of the batch (float32).

    Data parallel: each rank's loss is its own mean and the gradients are averaged over ranks,
    as mindcv does for images (every rank's batch has the same shape; only the final block of
    the corpus has padding)."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, input_ids, attention_mask):
        total, count = _nll_sum(self.net, input_ids, attention_mask)
        return total / ops.maximum(count, 1.0)


class TokenNLL(nn.Cell):
    """``(sum of target NLL, number of targets)`` of a batch in float32: evaluation compiles this
    once and sums over batches (and ranks), so the perplexity is exact over the split."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, input_ids, attention_mask):
        return _nll_sum(self.net, input_ids, attention_mask)


def batch_tensors(batch):
    """numpy ``(ids, mask)`` -> MindSpore int32 tensors."""
    ids, mask = batch
    return ms.Tensor(np.ascontiguousarray(ids, np.int32)), ms.Tensor(np.ascontiguousarray(mask, np.int32))


def perplexity_of(batches, forward, world=1, reducer=None):
    """``(perplexity, mean nll, targets)`` over ``batches`` (numpy ``(ids, mask)`` pairs) with
    ``forward`` a :class:`TokenNLL` (network in eval mode). Sums go over ranks when world > 1
    (``reducer``: a :class:`slab_ms.engine.train_step.SumOverRanks` of size 2)."""
    total = np.zeros(2, np.float64)
    for batch in batches:
        s, n = forward(*batch_tensors(batch))
        total += (float(s.asnumpy()), float(n.asnumpy()))
    if world > 1:
        total = np.asarray(reducer(total.astype(np.float32)), np.float64)
    if total[1] == 0:
        return float("nan"), float("nan"), 0
    mean = total[0] / total[1]
    return float(math.exp(min(mean, 700.0))), float(mean), int(total[1])

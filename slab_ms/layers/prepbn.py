"""RepBN and PRepBN (progressive re-parameterized BatchNorm), SLAB paper section 3.

Upstream names: ``RepBN`` and ``LinearNorm`` in ``classification/models/prepbn.py``.
Parameter names mirror the PyTorch state dict; only BatchNorm/LayerNorm suffixes
differ (``gamma``/``beta``/``moving_mean``/``moving_variance``).
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .common import as_float32, cast_back, shared_graph


class TokenBatchNorm(nn.Cell):
    """BatchNorm over the channel axis of (B, N, C) tokens, with PyTorch semantics.

    Equivalent to ``torch.nn.BatchNorm1d`` applied to the (B, C, N) view: statistics over
    B and N, biased variance for normalization, unbiased variance in the running average,
    torch momentum 0.1. A cell of its own around the ``BatchNorm`` primitive instead of
    ``nn.BatchNorm1d`` because PRepBN must be able to keep the running statistics (its warm-up
    phase never calls the BN in upstream) and because ``num_batches_tracked`` is part of the
    checkpoint layout. Statistics are always computed in float32, also under AMP.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.gamma = Parameter(Tensor(np.ones(num_features, np.float32)), name="gamma")
        self.beta = Parameter(Tensor(np.zeros(num_features, np.float32)), name="beta")
        self.moving_mean = Parameter(Tensor(np.zeros(num_features, np.float32)), name="moving_mean",
                                     requires_grad=False)
        self.moving_variance = Parameter(Tensor(np.ones(num_features, np.float32)), name="moving_variance",
                                         requires_grad=False)
        self.num_batches_tracked = Parameter(Tensor(0, ms.int64), name="num_batches_tracked", requires_grad=False)

    def affine(self):
        """The eval-mode map as ``(scale, shift)``: ``bn(x) = scale * x + shift`` per channel."""
        inv_std = ops.rsqrt(self.moving_variance + self.eps)
        scale = self.gamma * inv_std
        return scale, self.beta - self.moving_mean * scale

    def construct(self, x, update_stats=None):
        if not self.training:
            scale, shift = self.affine()
            return cast_back(as_float32(x) * scale + shift, x.dtype)
        xf = as_float32(x).reshape(-1, self.num_features)
        # MindSpore's fused BatchNorm: one op forward, one BatchNormGrad backward, and the running
        # average updated in place with torch's rule (new = (1 - m) old + m batch, unbiased
        # variance). Written out (mean, centre, square, mean, rsqrt, the update), it cost
        # slab_swin_tiny's training step a third of its memory and much of its compile time
        # (bench/results/train.md). The momentum is read here, at compile time, so that
        # recalibration can set it to 1 for a graph of its own.
        batch_norm = ops.BatchNorm(is_training=True, epsilon=float(self.eps), momentum=float(self.momentum))
        one = ops.ones_like(self.num_batches_tracked)
        if update_stats is None:
            y = batch_norm(xf, self.gamma, self.beta, self.moving_mean, self.moving_variance)[0]
            ops.assign_add(self.num_batches_tracked, one)
        else:   # a bool tensor from PRepBN: during warm-up the statistics stay as they were
            old_mean, old_var = self.moving_mean * 1.0, self.moving_variance * 1.0   # read before the update
            y = batch_norm(xf, self.gamma, self.beta, self.moving_mean, self.moving_variance)[0]
            ops.assign(self.moving_mean, ops.select(update_stats, self.moving_mean, old_mean))
            ops.assign(self.moving_variance, ops.select(update_stats, self.moving_variance, old_var))
            ops.assign_add(self.num_batches_tracked, ops.select(update_stats, one, ops.zeros_like(one)))
        return cast_back(y.reshape(x.shape), x.dtype)


class RepBN(nn.Cell):
    """``RepBN(x) = BN(x) + alpha * x`` (SPEC section 1); alpha is one learnable scalar."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.alpha = Parameter(Tensor(np.ones(1, np.float32)), name="alpha")
        self.bn = TokenBatchNorm(dim, eps=eps)

    def affine(self):
        """Lemma 4.1: in eval mode ``RepBN(x) = a * x + b`` with ``a = gamma/sqrt(var+eps) + alpha``."""
        scale, shift = self.bn.affine()
        return scale + self.alpha, shift

    def construct(self, x, update_stats=None):
        return self.bn(x, update_stats) + cast_back(self.alpha * as_float32(x), x.dtype)


class PRepBN(nn.Cell):
    """Progressive RepBN, upstream ``LinearNorm(norm1=LayerNorm, norm2=RepBN)`` (SPEC section 2).

    Training: while ``warm > 0`` it decrements ``warm`` and returns ``norm1(x)`` (the BN
    statistics do not move). Afterwards ``lam = r0 * iter / total_step`` is read *before*
    ``iter`` is decremented (never below 0) and the output is
    ``lam * norm1(x) + (1 - lam) * norm2(x)``. Eval: ``norm2(x)`` only.

    The counters are non-trainable int64 Parameters, so they are saved in checkpoints and
    updated inside ``construct`` in GRAPH_MODE. Branch-free (``select``) so that the graph
    has no data-dependent control flow: during warm-up ``lam`` is exactly 1, which gives
    ``norm1(x)`` bit for bit.

    ``schedule_mode`` (read when a graph is compiled) says who moves the counters in training:
    ``"forward"`` (the default, upstream's): every training forward, as above. ``"warm"`` and
    ``"mix"``: the caller, after each forward (:meth:`counters_after_forward`), and the forward
    is compiled for one phase of the schedule, ``norm1(x)`` during warm-up,
    ``lam * norm1 + (1 - lam) * norm2`` after it, with no counter update and no statistics gating
    in the differentiated graph. :class:`slab_ms.engine.train_step.Stepper` uses them: the same
    numbers bit for bit, a shorter first call (docs/performance.md, training cost).
    ``"warm_counted"`` and ``"mix_counted"``: the same per-phase forwards, each moving its own
    counter in the graph as upstream's rule does in that phase (sink mode,
    :class:`slab_ms.engine.sink.SinkLoop`: the counters never leave the device).
    """

    schedule_mode = "forward"
    phase_forward = True                 # this class compiles the "warm" and "mix" forwards
    counted_phases = True                # ... and their "_counted" forms
    counter_names = ("warm", "iter")     # the counters a training forward moves

    @shared_graph
    def __init__(self, dim, total_step=300000, warm=0, r0=1.0, ln_eps=1e-5):
        super().__init__()
        self.warm = Parameter(Tensor(warm, ms.int64), name="warm", requires_grad=False)
        self.iter = Parameter(Tensor(total_step, ms.int64), name="iter", requires_grad=False)
        self.total_step = Parameter(Tensor(total_step, ms.int64), name="total_step", requires_grad=False)
        self.r0 = r0
        self.norm1 = nn.LayerNorm((dim,), epsilon=ln_eps)
        self.norm2 = RepBN(dim)

    def set_schedule(self, total_step, warm=0):
        """Restart the schedule: ``iter = total_step`` (the trainer calls this at step 0)."""
        for p, v in ((self.warm, warm), (self.iter, total_step), (self.total_step, total_step)):
            p.set_data(Tensor(int(v), ms.int64))

    @staticmethod
    def counters_for(forwards, warm_forwards):
        """``(total_step, warm)`` counter values for a schedule of ``forwards`` training forwards
        after ``warm_forwards`` of pure norm1 (here the counters count forwards one for one)."""
        return int(forwards), int(warm_forwards)

    @staticmethod
    def forwards_to_finish(total_step, warm):
        """Training forwards from a restart until lambda is 0 (the first forward that is pure BN)."""
        return int(warm) + int(total_step)

    def lam(self):
        """Current LayerNorm weight (1 during warm-up), as the next training forward will use it."""
        warm, it, total = (int(p.asnumpy()) for p in (self.warm, self.iter, self.total_step))
        return 1.0 if warm > 0 else float(np.float32(self.r0 * it) / np.float32(total))

    def affine(self):
        return self.norm2.affine()

    def _scheduled_lam(self, it):
        return self.r0 * it.astype(ms.float32) / self.total_step.astype(ms.float32)

    @staticmethod
    def counters_after_forward(warm, it):
        """``(warm, iter)`` as Python ints after one training forward from ``(warm, it)``: what
        :meth:`construct` does in ``schedule_mode`` "forward", for callers that move the counters
        themselves ("warm"/"mix")."""
        if warm > 0:
            return warm - 1, it
        return warm, it - 1 if it > 0 else it

    @staticmethod
    def _mix(x1, x2, lam):
        lam = ops.stop_gradient(lam).astype(x1.dtype)   # a schedule, not a weight: no gradient to compute
        return lam * x1 + (1 - lam) * x2

    def construct(self, x):
        if not self.training:
            return self.norm2(x)
        if self.schedule_mode == "warm":
            return self.norm1(x)
        if self.schedule_mode == "mix":
            x1 = self.norm1(x)
            return self._mix(x1, self.norm2(x), self._scheduled_lam(self.iter))
        if self.schedule_mode == "warm_counted":
            out = self.norm1(x)
            return ops.depend(out, ops.assign(self.warm, self.warm - ops.ones_like(self.warm)))
        if self.schedule_mode == "mix_counted":
            it = self.iter
            out = self._mix(self.norm1(x), self.norm2(x), self._scheduled_lam(it))
            return ops.depend(out, ops.assign(self.iter, it - (it > 0).astype(it.dtype)))
        warm = self.warm
        it = self.iter
        in_warm = warm > 0
        scheduled = self._scheduled_lam(it)
        lam = ops.select(in_warm, ops.ones_like(scheduled), scheduled)
        zero = ops.zeros_like(warm)
        one = ops.ones_like(warm)
        ops.assign(self.warm, warm - ops.select(in_warm, one, zero))
        ops.assign(self.iter, it - ops.select(ops.logical_and(ops.logical_not(in_warm), it > 0), one, zero))
        x1 = self.norm1(x)
        return self._mix(x1, self.norm2(x, ops.logical_not(in_warm)), lam)


def build_norm(kind, dim, total_step=None, ln_eps=1e-5):
    """Norm factory per family: ``'prepbn'`` (progressive), ``'repbn'`` (plain) or ``'layernorm'``."""
    if kind == "prepbn":
        return PRepBN(dim, total_step=total_step, ln_eps=ln_eps)
    if kind == "repbn":
        return RepBN(dim)
    if kind == "layernorm":
        return nn.LayerNorm((dim,), epsilon=ln_eps)
    raise ValueError(f"unknown norm kind {kind!r}; expected 'prepbn', 'repbn' or 'layernorm'")

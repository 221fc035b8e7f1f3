"""Training-step cells: one forward per micro-step, loss scaling, gradient clipping, gradient
accumulation, data-parallel gradient reduction and an EMA of the float weights.

Why not ``nn.TrainOneStepCell``/mindcv's ``TrainStep``: both run ``network(*inputs)`` and then
the gradient of the network, i.e. two forwards, and PRepBN's counters move on every training
forward; mindcv's EMA also averages every parameter, the integer counters included. Here the
loss and the gradients come from one ``value_and_grad`` call and the EMA covers float
parameters only (the counters are copied, never averaged).
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from .schedule import StepSchedule

_ema_op = ops.MultitypeFuncGraph("slab_ema")
_add_op = ops.MultitypeFuncGraph("slab_accumulate")
_zero_op = ops.MultitypeFuncGraph("slab_zero")
_reduce_op = ops.MultitypeFuncGraph("slab_allreduce_scaled")


@_ema_op.register("Tensor", "Tensor", "Tensor")
def _ema(decay, average, value):
    return ops.assign(average, average * decay + value.astype(average.dtype) * (1.0 - decay))


@_add_op.register("Tensor", "Tensor")
def _accumulate(total, grad):
    return ops.assign_add(total, grad.astype(total.dtype))


@_zero_op.register("Tensor")
def _zero(total):
    return ops.assign(total, ops.zeros_like(total))


class NetWithLoss(nn.Cell):
    """``loss_fn(net(x).float32, y)``; the loss is always computed in float32."""

    def __init__(self, net, loss_fn):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn

    def construct(self, x, y):
        return self.loss_fn(self.net(x).astype(ms.float32), y)


class _ScaledLoss(nn.Cell):
    def __init__(self, net_with_loss):
        super().__init__(auto_prefix=False)
        self.net_with_loss = net_with_loss

    def construct(self, x, y, scale):
        return self.net_with_loss(x, y) * scale


def ema_source_params(net):
    """The parameters an EMA averages: every float parameter (weights and BN running statistics)."""
    return [p for p in net.get_parameters() if p.dtype in (ms.float32, ms.float16, ms.bfloat16)]


def make_loss_scaler(init_scale=1.0, dynamic=False, factor=2, window=1000):
    """MindSpore's own loss scaler: ``amp.DynamicLossScaler`` (halve on overflow, grow by ``factor``
    after ``window`` finite steps, never below 1) or ``amp.StaticLossScaler``. Its ``scale_value``
    (and the dynamic one's ``counter``) are saved in training checkpoints."""
    if dynamic:
        return ms.amp.DynamicLossScaler(float(init_scale), int(factor), int(window))
    return ms.amp.StaticLossScaler(float(init_scale))


class Logits(nn.Cell):
    """``net(x)`` as float32: the forward that evaluation and BN recalibration compile once."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x):
        return self.net(x).astype(ms.float32)


class _UpdateBase(nn.Cell):
    """Reduce, unscale, check, clip, apply and average: what happens once per optimizer step.

    Unscaling and clipping are one multiply per gradient: ``g * (1/scale) * clip / max(norm, clip)``
    with ``norm`` the global L2 norm of the unscaled gradients (``ops.clip_by_global_norm``'s
    rule, no epsilon). MindSpore's own ``unscale`` and ``clip_by_global_norm`` cost six graph nodes
    per parameter (square, sum, cast, expand, multiply, divide) plus the unscale's; with 268
    parameters in slab_swin_tiny that was a fifth of the training graph, and compile time grows
    with the node count. With a static loss scale of 1 and no clipping nothing is multiplied.
    """

    def __init__(self, optimizer, loss_scale, grad_reducer=None, clip_value=None, ema=None, ema_decay=0.9999):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.loss_scale = loss_scale
        self.reducer = grad_reducer
        self.use_reducer = grad_reducer is not None
        self.clip = clip_value is not None and clip_value > 0
        self.clip_value = float(clip_value or 0.0)
        self.check_overflow = isinstance(loss_scale, ms.amp.DynamicLossScaler)
        self.unscale = self.check_overflow or float(loss_scale.scale_value.asnumpy()) != 1.0
        self.hyper_map = ops.HyperMap()
        self.use_ema = ema is not None
        if self.use_ema:
            self.ema_source, self.ema_params = ema
            self.ema_decay = Tensor(ema_decay, ms.float32)

    def _update(self, grads):
        if self.use_reducer:
            grads = self.reducer(grads)
        finite = Tensor(True)
        if self.check_overflow:
            finite = ms.amp.all_finite(grads)
            self.loss_scale.adjust(finite)
        if self.clip or self.unscale:
            grads = self.hyper_map(ops.partial(_scale_op, self._coefficient(grads)), grads)
        if self.check_overflow:
            if finite:   # an overflowing step changes nothing but the loss scale
                self._apply(grads)
        else:
            self._apply(grads)
        return finite

    def _coefficient(self, grads):
        """``(1 / loss scale) * clip / max(norm, clip)`` as one float32 scalar."""
        inv_scale = 1.0 / self.loss_scale.scale_value.astype(ms.float32)
        if not self.clip:
            return inv_scale
        squares = self.hyper_map(_square_sum_op, grads)
        norm = ops.sqrt(ops.addn(squares)) * inv_scale
        return inv_scale * (self.clip_value / ops.maximum(norm, self.clip_value))

    def _apply(self, grads):
        self.optimizer(grads)
        if self.use_ema:
            self.hyper_map(ops.partial(_ema_op, self.ema_decay), self.ema_params, self.ema_source)


_scale_op = ops.MultitypeFuncGraph("slab_scale")
LAST_AXIS_FIRST = 1 << 16   # gradients of at least this many elements are summed in two steps
_square_sum_op = ops.MultitypeFuncGraph("slab_square_sum")


@_scale_op.register("Tensor", "Tensor")
def _scale(coefficient, grad):
    return grad * coefficient.astype(grad.dtype)


@_square_sum_op.register("Tensor")
def _square_sum(grad):
    g = grad.astype(ms.float32)
    squares = g * g
    if len(g.shape) > 1 and g.size >= LAST_AXIS_FIRST:
        # last axis first: MindSpore's CPU ReduceSum over all axes of a large tensor is ~6x slower
        # (0.10 s against 0.016 s for a 32000 x 1024 gradient; bench/bench_lm_train.py --profile);
        # small tensors keep one node (graph size is compile time)
        squares = squares.sum(axis=-1)
    return squares.sum()


class TrainStep(_UpdateBase):
    """One micro-step that is also an optimizer step: ``(loss, finite) = step(images, labels)``."""

    def __init__(self, net_with_loss, optimizer, loss_scale, **kw):
        super().__init__(optimizer, loss_scale, **kw)
        self.scaled_loss = _ScaledLoss(net_with_loss)   # an attribute, so set_train() reaches the network
        self.grad_fn = ops.value_and_grad(self.scaled_loss, None, self.weights)

    def construct(self, x, y):
        scale = self.loss_scale.scale_value
        loss, grads = self.grad_fn(x, y, scale)
        finite = self._update(grads)
        return loss / scale, finite


class AccumulateStep(nn.Cell):
    """A micro-step that only adds its gradients into ``accum`` (no communication)."""

    def __init__(self, net_with_loss, weights, accum, loss_scale):
        super().__init__(auto_prefix=False)
        self.weights = weights
        self.accum = accum
        self.loss_scale = loss_scale
        self.scaled_loss = _ScaledLoss(net_with_loss)
        self.grad_fn = ops.value_and_grad(self.scaled_loss, None, weights)
        self.hyper_map = ops.HyperMap()

    def construct(self, x, y):
        scale = self.loss_scale.scale_value
        loss, grads = self.grad_fn(x, y, scale)
        loss = ops.depend(loss, self.hyper_map(_add_op, self.accum, grads))
        return loss / scale


class ApplyAccumulated(_UpdateBase):
    """The optimizer step after ``k`` AccumulateSteps: mean gradient, then as TrainStep."""

    def __init__(self, accum, steps, optimizer, loss_scale, **kw):
        super().__init__(optimizer, loss_scale, **kw)
        self.accum = accum
        self.inv_steps = Tensor(1.0 / steps, ms.float32)

    def construct(self):
        grads = self.hyper_map(ops.partial(ops.mul, self.inv_steps), self.accum)
        finite = self._update(grads)
        return ops.depend(finite, self.hyper_map(_zero_op, self.accum))


class AllReduceParams(nn.Cell):
    """Replace parameters in place by their sum over the data-parallel group times ``scale``
    (``1 / world``: the mean, for BN running statistics and their EMA)."""

    def __init__(self, params, scale=1.0):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(params)
        self.allreduce = ops.AllReduce()
        self.scale = float(scale)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(ops.partial(_reduce_op, self.allreduce, self.scale), self.params)


@_reduce_op.register("Function", "Number", "Tensor")
def _allreduce_scaled(allreduce, scale, param):
    return ops.assign(param, allreduce(param) * scale)


class SumOverRanks:
    """Sum a small float vector over the data-parallel group (one compiled graph, reused)."""

    def __init__(self, size):
        self.buffer = Parameter(Tensor(np.zeros(size, np.float32)), name="sum_over_ranks", requires_grad=False)
        self.cell = AllReduceParams([self.buffer])

    def __call__(self, values):
        self.buffer.set_data(Tensor(np.asarray(values, np.float32)))
        self.cell()
        return self.buffer.asnumpy()


class Stepper:
    """Python driver: ``loss, applied, finite = stepper.step(images, labels)``.

    ``applied`` is True on the micro-step that ended an optimizer step. With accumulation 1
    a single fused graph runs; otherwise AccumulateStep k times, then ApplyAccumulated.

    ``schedule="step"`` (the default) moves the PRepBN counters from here after each forward and
    compiles the forward per schedule phase (:class:`slab_ms.engine.schedule.StepSchedule`: the
    same numbers as upstream's in-forward counters, less compile time); ``"forward"`` keeps them
    in the forward, as a direct call of the network does.
    """

    def __init__(self, net_with_loss, optimizer, accumulation=1, loss_scale=None, grad_reducer=None,
                 clip_value=None, ema_decay=None, network=None, schedule="step"):
        self.accumulation = accumulation
        self.loss_scale = loss_scale or make_loss_scaler()
        self.ema_pairs = []
        ema = None
        if ema_decay is not None:
            source = ema_source_params(network)
            averages = [Parameter(p.data.copy(), name="ema." + p.name, requires_grad=False) for p in source]
            self.ema_pairs = list(zip(source, averages))
            ema = (ParameterTuple(source), ParameterTuple(averages))
        kw = dict(grad_reducer=grad_reducer, clip_value=clip_value, ema=ema,
                  ema_decay=ema_decay if ema_decay is not None else 0.0)
        self.optimizer = optimizer
        self.net_with_loss = net_with_loss
        self.micro = 0
        if schedule not in ("step", "forward"):
            raise ValueError(f"schedule must be 'step' or 'forward', got {schedule!r}")
        # "step": PRepBN counters moved by this driver, one forward graph per schedule phase
        # (engine.schedule.StepSchedule); "forward", or modules whose counters differ: upstream's
        # in-forward counters, one graph
        self.schedule = StepSchedule.for_network(net_with_loss) if schedule == "step" else None
        if accumulation == 1:
            self._make_forward_step = lambda: TrainStep(net_with_loss, optimizer, self.loss_scale, **kw)
        else:
            weights = optimizer.parameters
            self.accum = ParameterTuple([Parameter(ops.zeros(p.shape, ms.float32), name="accum." + p.name,
                                                   requires_grad=False) for p in weights])
            self._make_forward_step = lambda: AccumulateStep(net_with_loss, weights, self.accum, self.loss_scale)
            self.apply = ApplyAccumulated(self.accum, accumulation, optimizer, self.loss_scale, **kw)
        self._forward_steps = {}   # per schedule phase ("forward" without a StepSchedule)

    def _forward_step(self, phase):
        if phase not in self._forward_steps:
            cell = self._make_forward_step()
            cell.set_train()
            self._forward_steps[phase] = cell
        return self._forward_steps[phase]

    def _forward(self, x, y):
        counters = self.schedule.counters() if self.schedule is not None else None
        if counters is None:
            return self._forward_step("forward")(x, y)
        phase = "warm" if counters["warm"] > 0 else "mix"
        with self.schedule.compiled_as(phase):
            out = self._forward_step(phase)(x, y)
        self.schedule.advance(counters)
        return out

    def step(self, x, y):
        """One micro-step in training mode (the network is switched to training on every call:
        evaluation in between must not leave PRepBN/BN in eval behaviour)."""
        self.net_with_loss.set_train(True)
        if self.accumulation == 1:
            loss, finite = self._forward(x, y)
            return float(loss.asnumpy()), True, bool(finite.asnumpy())
        loss = float(self._forward(x, y).asnumpy())
        self.micro += 1
        if self.micro % self.accumulation:
            return loss, False, True
        return loss, True, bool(self.apply().asnumpy())

    def ema_state(self):
        """``{name: array}`` of the EMA weights (float parameters only)."""
        return {p.name: a.asnumpy() for p, a in self.ema_pairs}

    def reset_ema(self):
        for p, a in self.ema_pairs:
            a.set_data(p.data.copy())

    def load_ema_state(self, state):
        for p, a in self.ema_pairs:
            if p.name in state:
                a.set_data(Tensor(state[p.name], a.dtype))

"""Dataset sink mode: many optimizer steps per host call, the host reading back once per sink.

The per-step loop (:class:`slab_ms.engine.train_step.Stepper`) reads the loss and the finite flag
of every step back to the host and moves the PRepBN counters from Python. In sink mode
:class:`SinkStep` runs a micro-step with everything it needs kept on the device: the PRepBN
counters move in the forward (the cells' own in-forward update, upstream's rule), the learning
rate comes from the optimizer's step counter, and the loss and finite flag of every optimizer
step are written into device buffers that :class:`SinkLoop` reads once per sink.

How the steps reach the device:
- Ascend and GPU: ``mindspore.data_sink`` feeds ``sink_size x accumulation`` micro-batches from
  the dataset queue and loops on the device (one host call per sink);
- CPU: MindSpore has no dataset sink (``data_sink`` refuses the CPU target, and ``Model.train``
  falls back to a non-sink loop there), so the host launches the compiled micro-step per batch,
  without any read-back or host-side write between the steps of a sink.
The numbers are those of the per-step loop either way (``tests/test_sink.py``).

Where the PRepBN kind has them (the vision PRepBN), the sunk step is compiled per phase of the
schedule, as the per-step loop's is: ``warm_counted`` and ``mix_counted`` forwards that move
only their phase's counter in the graph, with no select and no statistics gating. A sink that
would cross the end of the warm-up is run as two device loops. Other kinds (the LLaMA PRepBN's
16-forward gating) keep the in-forward schedule.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .schedule import StepSchedule


class SinkStep(nn.Cell):
    """One micro-step of a sunk loop: ``forward_step`` (``TrainStep``, or ``AccumulateStep``
    followed every ``accumulation`` micro-steps by ``apply``) with the step's mean loss and its
    finite flag recorded at slot ``micro // accumulation`` of two device buffers of
    ``capacity`` optimizer steps."""

    def __init__(self, forward_step: nn.Cell, apply: nn.Cell | None, accumulation: int, capacity: int):
        super().__init__(auto_prefix=False)
        self.forward_step = forward_step
        self.apply_step = apply
        self.k = int(accumulation)
        self.inv_k = 1.0 / self.k
        self.micro = Parameter(Tensor(0, ms.int32), name="sink.micro", requires_grad=False)
        self.losses = Parameter(Tensor(np.zeros(capacity, np.float32)), name="sink.losses", requires_grad=False)
        self.finite = Parameter(Tensor(np.ones(capacity, np.float32)), name="sink.finite", requires_grad=False)

    def construct(self, x, y):
        if self.k == 1:
            loss, finite = self.forward_step(x, y)
        else:
            loss = self.forward_step(x, y)
            finite = Tensor(True)
            if (self.micro + 1) % self.k == 0:
                finite = self.apply_step()
        slot = ops.reshape(self.micro // self.k, (1, 1))
        loss = ops.depend(loss, ops.scatter_nd_add(self.losses, slot, ops.reshape(loss * self.inv_k, (1,))))
        loss = ops.depend(loss, ops.scatter_nd_update(self.finite, slot,
                                                      ops.reshape(finite.astype(ms.float32), (1,))))
        return ops.depend(loss, ops.assign_add(self.micro, Tensor(1, ms.int32)))

    def read_and_reset(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``steps`` recorded (loss, finite) pairs; the buffers start over."""
        losses, finite = self.losses.asnumpy()[:steps].copy(), self.finite.asnumpy()[:steps] > 0.5
        self.losses.set_data(Tensor(np.zeros(self.losses.shape, np.float32)))
        self.finite.set_data(Tensor(np.ones(self.finite.shape, np.float32)))
        self.micro.set_data(Tensor(0, ms.int32))
        return losses, finite


class SinkLoop:
    """Runs optimizer steps ``sink_size`` at a time through :class:`SinkStep`.

    ``run(batches, steps)`` takes ``steps * accumulation`` micro-batches from ``batches`` (an
    iterable of input tuples on CPU; on Ascend/GPU a ``mindspore.dataset.Dataset`` or such an
    iterable, wrapped into one) and returns the per-step losses and finite flags."""

    def __init__(self, stepper: Any, sink_size: int, jit_level: str | None = None):
        if stepper.schedule is not None:
            raise ValueError("sink mode needs a Stepper with schedule='forward' (counters moved in the graph)")
        self.stepper = stepper
        self.k = stepper.accumulation
        self.sink_size = int(sink_size)
        schedule = StepSchedule.for_network(stepper.net_with_loss)
        self.schedule = schedule if schedule is not None and getattr(schedule.norms[0], "counted_phases", False) \
            else None
        self.cells: dict[str, SinkStep] = {}
        self.device_sink = ms.get_context("device_target") in ("Ascend", "GPU")
        self.jit_level = jit_level
        self._sunk: dict[tuple[str, int, int], Callable] = {}

    def _cell(self, phase):
        """The sunk step compiled for ``phase`` ("forward", "warm_counted", "mix_counted")."""
        if phase not in self.cells:
            cell = SinkStep(self.stepper._forward_step(phase), getattr(self.stepper, "apply", None), self.k,
                            self.sink_size)
            cell.set_train()
            self.cells[phase] = cell
        return self.cells[phase]

    def _phases(self, steps):
        """``[(phase, optimizer steps)]`` for the next ``steps``: split at the end of the warm-up."""
        counters = self.schedule.counters() if self.schedule is not None else None
        if counters is None or counters["warm"] % self.k:
            return [("forward", steps)]
        warm_steps = counters["warm"] // self.k
        if warm_steps == 0:
            return [("mix_counted", steps)]
        if warm_steps >= steps:
            return [("warm_counted", steps)]
        return [("warm_counted", warm_steps), ("mix_counted", steps - warm_steps)]

    def run(self, batches: Iterable, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``steps`` (at most ``sink_size``) optimizer steps; one read-back at the end."""
        if not 0 < steps <= self.sink_size:
            raise ValueError(f"a sink holds 1..{self.sink_size} optimizer steps, got {steps}")
        self.stepper.net_with_loss.set_train(True)
        losses, finite = [], []
        for phase, n in self._phases(steps):
            cell = self._cell(phase)
            with self._compiled_as(phase):
                self._loop(cell, phase, batches, n * self.k)
            got = cell.read_and_reset(n)
            losses.append(got[0])
            finite.append(got[1])
        return np.concatenate(losses), np.concatenate(finite)

    def _compiled_as(self, phase):
        if phase == "forward":
            import contextlib
            return contextlib.nullcontext()
        return self.schedule.compiled_as(phase)

    def _loop(self, cell, phase, batches, micro):
        if self.device_sink:
            self._device_sink(cell, phase, batches, micro)()
            return
        done = 0
        for batch in batches:
            cell(*batch)
            done += 1
            if done == micro:
                break
        if done < micro:
            raise RuntimeError(f"the data ran out after {done} of {micro} micro-batches of a sink")

    def _device_sink(self, cell, phase, dataset, micro):
        """``mindspore.data_sink`` over ``dataset`` looping ``micro`` times on the device (one
        function per phase, dataset and length, compiled once)."""
        key = (phase, id(dataset), micro)
        if key not in self._sunk:
            from mindspore import JitConfig
            config = JitConfig(jit_level=self.jit_level) if self.jit_level else JitConfig()
            self._sunk = {k: v for k, v in self._sunk.items() if k[1] == id(dataset)}
            self._sunk[key] = ms.data_sink(cell, dataset, sink_size=micro, jit_config=config)
        return self._sunk[key]


def as_dataset(batches: Iterable) -> Any:
    """A ``mindspore.dataset`` over an iterable of input tuples of Tensors (the device sink reads
    datasets only; the language model's token blocks come from Python)."""
    import mindspore.dataset as ds
    batches = iter(batches)
    first = next(batches)

    def arrays():
        yield tuple(t.asnumpy() for t in first)
        for batch in batches:
            yield tuple(t.asnumpy() for t in batch)
    return ds.GeneratorDataset(arrays, column_names=[f"input{i}" for i in range(len(first))], shuffle=False)


def sink_plan(start: int, end: int, sink_size: int, stops: Iterable[int] = ()) -> list[int]:
    """Sink lengths (optimizer steps) from step ``start`` to ``end``: ``sink_size`` each, cut so
    that a sink ends at every step of ``stops`` (checkpoint steps) that lies in between."""
    cuts = sorted({s for s in stops if start < s < end} | {end})
    plan, at = [], start
    for cut in cuts:
        while at < cut:
            n = min(sink_size, cut - at)
            plan.append(n)
            at += n
    return plan

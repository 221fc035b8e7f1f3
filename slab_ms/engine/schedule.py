"""The PRepBN schedule in a training run: planned in optimizer steps, checked against the run.

Every PRepBN module moves its counters by one per training forward. With gradient accumulation
an optimizer step is ``k`` forwards, so the modules are given ``k`` times the planned steps: the
LayerNorm weight lambda then reaches 0 after exactly the planned number of optimizer steps.
The LLaMA PRepBN counts in periods of 16 forwards (upstream's gating): the plan is rounded up to
whole periods (``LlamaPRepBN.counters_for``) and must still finish within the run.
"""
import contextlib

import mindspore as ms

from ..layers.common import shared_graph_key
from ..layers.prepbn import PRepBN
from ..errors import ConfigError


def prepbn_cells(net):
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, PRepBN)]


def plan_schedule(cfg, net, total_opt_steps):
    """``(steps, warm)`` in optimizer steps for this run, or None for a network without PRepBN.

    ``prepbn_steps`` wins, then ``prepbn_fraction`` of the run, else the model's own total_step.
    A schedule that ends after the run is refused: LayerNorm would still be mixed in when the
    network is evaluated (and re-parameterized) as BN only.
    """
    cells = prepbn_cells(net)
    if not cells:
        if cfg.prepbn_steps is not None or cfg.prepbn_fraction is not None:
            raise ConfigError(f"prepbn_steps/prepbn_fraction set but {cfg.model} has no PRepBN module")
        return None
    if cfg.prepbn_steps is not None:
        steps, origin = cfg.prepbn_steps, "prepbn_steps"
    elif cfg.prepbn_fraction is not None:
        steps, origin = max(1, int(round(cfg.prepbn_fraction * total_opt_steps))), "prepbn_fraction"
    else:
        steps, origin = int(cells[0].total_step.asnumpy()), f"{cfg.model}'s default total_step"
    warm = cfg.prepbn_warm
    if warm + steps > total_opt_steps:
        raise ConfigError(
            f"the PRepBN schedule ({origin}: {warm} warm-up + {steps} optimizer steps) ends after the run "
            f"({total_opt_steps} optimizer steps), so LayerNorm would still be mixed in at the end; "
            f"set prepbn_steps <= {total_opt_steps - warm} or prepbn_fraction <= 1")
    k = cfg.gradient_accumulation_steps
    counters = cells[0].counters_for(steps * k, warm * k)
    finish = cells[0].forwards_to_finish(*counters)
    if finish > total_opt_steps * k:
        raise ConfigError(
            f"the PRepBN schedule ({warm} warm-up + {steps} optimizer steps, {k} forwards each) becomes counters "
            f"total_step {counters[0]}, warm {counters[1]} of {type(cells[0]).__name__}, which reach lambda 0 at "
            f"training forward {finish}, after the run's {total_opt_steps * k}; shorten prepbn_steps or "
            "prepbn_warm")
    return steps, warm


def recipe_note(cfg, steps_per_epoch, global_batch, total_steps):
    """One line when ``prepbn_steps`` was set for another global batch (``recipe_global_batch``)
    than this run's: where the schedule now ends, and the ``prepbn_fraction`` that keeps the
    recipe's share of the run (upstream issue #6: a larger batch turned 60000 steps into pure BN
    by epoch 47 and the loss went NaN). None when the batches agree or nothing is set."""
    recipe = cfg.recipe_global_batch
    if cfg.prepbn_steps is None or not recipe or recipe == global_batch:
        return None
    steps = cfg.prepbn_steps + cfg.prepbn_warm
    recipe_total = cfg.epoch_size * steps_per_epoch * global_batch / recipe
    share, now = steps / recipe_total, steps / total_steps
    return (f"PRepBN: prepbn_steps {cfg.prepbn_steps} was set for a global batch of {recipe}, where it is "
            f"{100 * share:.1f}% of the run; at this run's global batch {global_batch} the schedule ends at optimizer "
            f"step {steps} of {total_steps} ({100 * now:.1f}%, epoch {steps / steps_per_epoch:.1f}); to keep the "
            f"recipe's share set prepbn_fraction {share:.4f} instead of prepbn_steps")


def apply_schedule(net, steps, warm, accumulation=1):
    """Restart every PRepBN module's counters for ``steps`` optimizer steps after ``warm``
    (``accumulation`` forwards per optimizer step, translated by the module's ``counters_for``)."""
    for cell in prepbn_cells(net):
        cell.set_schedule(*cell.counters_for(steps * accumulation, warm * accumulation))


def current_lambda(net):
    """The LayerNorm weight the next training forward uses (None without PRepBN)."""
    cells = prepbn_cells(net)
    return cells[0].lam() if cells else None


class StepSchedule:
    """The PRepBN schedule moved by the training step instead of inside the forward.

    Upstream's PRepBN moves its counters in every training forward and selects, inside the
    forward, between warm-up (``norm1`` only, BN statistics held still) and the mix. In a
    differentiated graph those side effects and selects cost 1-1.5 s of the first training call
    of slab_swin_tiny and slab_deit_tiny here (docs/performance.md, training cost). Here the
    training step's forward is compiled per phase of the schedule (``schedule_mode`` "warm" or
    "mix", read at compile time; a run compiles the warm graph only if it has a warm-up), and the
    counters, equal in every module, are moved after each forward from Python
    (``counters_after_forward``; 25 modules take about 0.5 ms, where a graph doing it took 0.2 s
    to compile). Parameters, statistics and counters are those of the in-forward schedule bit for
    bit (``tests/test_engine.py``). Direct calls of the network keep upstream's behaviour.

    Where the modules' counters differ (a hand-edited checkpoint) or a PRepBN kind has no
    per-phase forward (the detection one), the caller keeps the in-forward schedule.
    """

    def __init__(self, net, norms):
        self.norms = norms
        self.names = norms[0].counter_names
        self.rule = norms[0].counters_after_forward
        self._expected = None   # the counters the last advance() set
        # shared front-end graphs (layers.common.shared_graph) that hold a PRepBN get the phase in
        # their key, so that a graph parsed for one phase is never reused for the other
        self.shared = [(cell, shared_graph_key(cell)) for _, cell in net.cells_and_names()
                       if shared_graph_key(cell) and any(isinstance(c, PRepBN) for _, c in cell.cells_and_names())]

    @classmethod
    def for_network(cls, net):
        """A StepSchedule for ``net``'s PRepBN modules, or None (no PRepBN, or a kind without the
        per-phase forward)."""
        norms = prepbn_cells(net)
        if not norms or len({type(c) for c in norms}) != 1 or not getattr(norms[0], "phase_forward", False):
            return None
        return cls(net, norms)

    def counters(self):
        """``{name: int}``, the counters every module holds, or None when the modules differ (the
        caller then runs the in-forward schedule). Only the first module is read while it holds
        what the last :meth:`advance` set; anything else (a checkpoint loaded, a direct call)
        checks them all again."""
        first = {n: int(getattr(self.norms[0], n).asnumpy()) for n in self.names}
        if first != self._expected:
            values = {tuple(int(getattr(c, n).asnumpy()) for n in self.names) for c in self.norms}
            if len(values) != 1:
                self._expected = None
                return None
        return first

    def advance(self, counters):
        """Set every module's counters to their values after one training forward from ``counters``."""
        values = self.rule(*(counters[n] for n in self.names))
        for norm in self.norms:
            for n, v in zip(self.names, values):
                getattr(norm, n).set_data(ms.Tensor(v, ms.int64))
        self._expected = dict(zip(self.names, values))

    @contextlib.contextmanager
    def compiled_as(self, phase):
        """Within: a graph compiled from the network gets the forward of ``phase``."""
        self._set(phase, f"[schedule {phase}]")
        try:
            yield
        finally:
            self._set("forward", "")

    def _set(self, mode, suffix):
        for norm in self.norms:
            norm.schedule_mode = mode
        for cell, key in self.shared:
            cell.cell_init_args = key + suffix

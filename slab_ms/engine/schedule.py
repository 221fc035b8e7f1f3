"""The PRepBN schedule in a training run: planned in optimizer steps, checked against the run.

Every PRepBN module moves its counters by one per training forward. With gradient accumulation
an optimizer step is ``k`` forwards, so the modules are given ``k`` times the planned steps: the
LayerNorm weight lambda then reaches 0 after exactly the planned number of optimizer steps.
The LLaMA PRepBN counts in periods of 16 forwards (upstream's gating): the plan is rounded up to
whole periods (``LlamaPRepBN.counters_for``) and must still finish within the run.
"""
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


def apply_schedule(net, steps, warm, accumulation=1):
    """Restart every PRepBN module's counters for ``steps`` optimizer steps after ``warm``
    (``accumulation`` forwards per optimizer step, translated by the module's ``counters_for``)."""
    for cell in prepbn_cells(net):
        cell.set_schedule(*cell.counters_for(steps * accumulation, warm * accumulation))


def current_lambda(net):
    """The LayerNorm weight the next training forward uses (None without PRepBN)."""
    cells = prepbn_cells(net)
    return cells[0].lam() if cells else None

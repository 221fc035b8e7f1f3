"""Training checkpoints: one atomic ``.ckpt`` per epoch holding everything a resume needs.

Layout: the model's parameters under their own names (so ``slab_ms.load_checkpoint``,
validate.py and convert.py read a training checkpoint as a model checkpoint), plus
``opt.*`` (moments, global step), ``ema.*`` (EMA of the float parameters), ``scaler.*``
(loss scale) and ``meta.*`` (epoch, optimizer step, world size, best top-1). The PRepBN
counters are model parameters, so the schedule position travels with the weights.
"""
import glob
import os
import re

import numpy as np
import mindspore as ms

from ..checkpoint import load_param_dict, model_params, read_ms_checkpoint, save_ms_checkpoint
from ..errors import CheckpointError

META_KEYS = ("epoch", "step", "world_size", "best_top1", "best_epoch", "prepbn_steps", "prepbn_warm",
             "accumulation", "best_val_loss")
FLOAT_META = ("best_top1", "best_val_loss")


def _optimizer_params(optimizer, model_names):
    return [p for p in optimizer.get_parameters() if p.name not in model_names]


def collect_state(net, optimizer, stepper, meta):
    """``{name: array}`` of the full training state."""
    state = {name: p.asnumpy() for name, p in net.parameters_and_names()}
    for p in _optimizer_params(optimizer, state):
        state["opt." + p.name] = p.asnumpy()
    for name, value in stepper.ema_state().items():
        state["ema." + name] = value
    scaler = stepper.loss_scale
    state["scaler.scale"] = scaler.scale_value.asnumpy()
    counter = getattr(scaler, "counter", None)   # finite steps since the last change (dynamic only)
    state["scaler.good_steps"] = counter.asnumpy() if counter is not None else np.asarray(0, np.int32)
    for k in META_KEYS:
        v = meta.get(k)
        state["meta." + k] = np.asarray(-1 if v is None else v, np.float64 if k in FLOAT_META else np.int64)
    return state


def save_state(path, state):
    save_ms_checkpoint(state, path)   # temp file + rename: a crash never leaves a partial checkpoint


def restore_state(path, net, optimizer, stepper):
    """Load a training checkpoint into the run; returns its ``meta`` dict. Strict on every section."""
    params = read_ms_checkpoint(path)
    if "meta.epoch" not in params:
        raise CheckpointError(f"{path}: not a training checkpoint from train.py (no meta.epoch); "
                              "use ckpt_path to start from model weights")
    load_param_dict(net, model_params(params), what=path)
    model_names = {name for name, _ in net.parameters_and_names()}
    missing = []
    for p in _optimizer_params(optimizer, model_names):
        key = "opt." + p.name
        if key not in params or tuple(params[key].shape) != tuple(p.shape):
            missing.append(p.name)
        else:
            p.set_data(ms.Tensor(params[key], p.dtype))
    if missing:
        raise CheckpointError(f"{path}: optimizer state does not fit ({len(missing)} missing or mis-shaped: "
                              f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    ema = {k[4:]: v for k, v in params.items() if k.startswith("ema.")}
    if stepper.ema_pairs and not ema:
        raise CheckpointError(f"{path}: the run uses EMA but the checkpoint has no EMA weights")
    stepper.load_ema_state(ema)
    scaler = stepper.loss_scale
    if "scaler.scale" in params:
        scaler.scale_value.set_data(ms.Tensor(params["scaler.scale"], ms.float32))
    if "scaler.good_steps" in params and getattr(scaler, "counter", None) is not None:
        scaler.counter.set_data(ms.Tensor(params["scaler.good_steps"], ms.int32))
    meta = {k: params["meta." + k].item() for k in META_KEYS if "meta." + k in params}
    return {k: (None if v == -1 else v) for k, v in meta.items()}


def epoch_path(directory, model, epoch):
    return os.path.join(directory, f"{model}-{epoch:04d}.ckpt")


def epoch_checkpoints(directory, model):
    """``[(epoch, path)]`` of this run's epoch checkpoints, newest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(model)}-*.ckpt")):
        m = re.fullmatch(re.escape(model) + r"-(\d+)\.ckpt", os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found, reverse=True)


def prune(directory, model, keep):
    """Delete all but the newest ``keep`` epoch checkpoints (best.ckpt is a separate file)."""
    for _, path in epoch_checkpoints(directory, model)[keep:]:
        os.remove(path)


def newest_loadable(directory, model, loader):
    """Call ``loader(path)`` on the newest epoch checkpoint that loads; skips broken ones.
    Returns ``(path, result)`` or ``(None, None)`` when there is none."""
    errors = []
    for _, path in epoch_checkpoints(directory, model):
        try:
            return path, loader(path)
        except CheckpointError as e:
            errors.append(str(e))
    if errors:
        raise CheckpointError(f"no loadable checkpoint in {directory}: " + "; ".join(errors))
    return None, None

"""MindSpore checkpoint I/O with strict loading (every missing, unexpected or mis-shaped
parameter is named) and atomic writes."""
from __future__ import annotations

import os

import numpy as np
import mindspore as ms
from mindspore import nn

from .io import atomic_write
from .errors import CheckpointError


def read_ms_checkpoint(path):
    """``{name: np.ndarray}`` from a MindSpore ``.ckpt`` (protobuf: no code is run)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file")
    try:
        params = ms.load_checkpoint(path)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError with multi-line text
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({first})") from None
    if not params:
        raise CheckpointError(f"{path}: the MindSpore checkpoint holds no parameters")
    return {name: p.asnumpy() for name, p in params.items()}


def save_ms_checkpoint(params, path):
    """Write ``{name: np.ndarray}`` as a ``.ckpt``, via a temp file renamed into place."""
    with atomic_write(path, suffix=".ckpt") as tmp:
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(np.asarray(v))} for k, v in params.items()], tmp)


def load_param_dict(net, params, what="checkpoint"):
    """Strictly copy ``{name: array}`` into ``net``; raises naming every problem, loads nothing then."""
    own = dict(net.parameters_and_names())
    missing = [k for k in own if k not in params]
    unexpected = [k for k in params if k not in own]
    mismatched = [f"{k} {list(np.shape(params[k]))} vs model {list(own[k].shape)}"
                  for k in own if k in params and tuple(np.shape(params[k])) != tuple(own[k].shape)]
    problems = []
    for kind, names in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
        if names:
            problems.append(f"{len(names)} {kind}: {', '.join(names)}")
    if problems:
        raise CheckpointError(f"{what} does not fit {type(net).__name__}; " + "; ".join(problems))
    for name, param in own.items():
        param.set_data(ms.Tensor(np.asarray(params[name]), dtype=param.dtype))


# Training checkpoints (train.py) hold the model under its own names plus these sections.
TRAIN_STATE_PREFIXES = ("opt.", "ema.", "scaler.", "meta.")


def model_params(params, use_ema=False):
    """The model's ``{name: array}`` from a model or training checkpoint.

    ``use_ema`` takes the EMA weights a training checkpoint carries for every float parameter
    (the integer PRepBN counters are never averaged and come from the model itself).
    """
    model = {k: v for k, v in params.items() if not k.startswith(TRAIN_STATE_PREFIXES)}
    if use_ema:
        ema = {k[len("ema."):]: v for k, v in params.items() if k.startswith("ema.")}
        if not ema:
            raise CheckpointError("use_ema: the checkpoint holds no EMA weights (train with ema: true)")
        unknown = sorted(set(ema) - set(model))
        if unknown:
            raise CheckpointError(f"EMA weights for parameters the model lacks: {', '.join(unknown)}")
        model.update(ema)
    return model


def load_checkpoint(net: nn.Cell, path: str, use_ema: bool = False) -> None:
    """Load a MindSpore ``.ckpt`` (a model, or a training checkpoint from train.py) into ``net``
    strictly, PRepBN counters included; ``use_ema`` loads a training checkpoint's EMA weights."""
    load_param_dict(net, model_params(read_ms_checkpoint(path), use_ema), what=path)
    return net


def load_pretrained(net, params, what="checkpoint", classifier="head"):
    """Start a fine-tuning run from ``params`` (a model's ``{name: array}``), as timm and mindcv do:
    the classifier (parameters under ``classifier.``) is left freshly initialised when its shape
    differs from the checkpoint's (another ``num_classes``); everything else loads strictly, every
    problem named. Returns the names left at their initial values."""
    prefix = classifier + "."
    own = dict(net.parameters_and_names())
    reinit = [k for k in own if k.startswith(prefix) and k in params
              and tuple(np.shape(params[k])) != tuple(own[k].shape)]
    if reinit:
        params = dict(params)
        for k in reinit:
            params[k] = own[k].asnumpy()
    load_param_dict(net, params, what=what)
    return reinit

"""MindSpore checkpoint I/O with strict loading (every missing, unexpected or mis-shaped
parameter is named) and atomic writes."""
from __future__ import annotations

import os

import numpy as np
import mindspore as ms
from mindspore import nn

from .io import atomic_write
from .errors import WRONG_BUFFERS, CheckpointError, name_problems


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


# The SLAB authors' own MindSpore port (mindspore-lab/models, research/huawei-noah/SLAB: Swin-T with
# RepBN; its release asset is swin_tiny_prepbn_mindspore.ckpt) saves its cell tree under the names
# this package uses, with two differences: it stores the tensors Swin computes from its sizes
# (``<block>.attn.relative_position_index`` (N, N) int64 and, in shifted blocks, ``<block>.attn_mask``
# (1, nW, 1, N, N)) as parameters, and its BNs have no ``num_batches_tracked``. This is the one place
# that recognises and adapts that layout: ``load_param_dict`` (so load_checkpoint, validate.py,
# train.py's ckpt_path, export) and convert.py --from mindspore (via ``convert/route.py``) use it.
OFFICIAL_MS = "official_ms"
OFFICIAL_MS_BUFFERS = ("relative_position_index", "attn_mask")
# Filled into every BN's missing ``num_batches_tracked``: what torch's BatchNorm loader fills into a
# fresh module for a checkpoint saved without it, and the count of a BN whose count is unknown. With
# momentum 0.1 (upstream's BatchNorm1d and TokenBatchNorm) no forward reads it: it only counts.
OFFICIAL_MS_NUM_BATCHES_TRACKED = 0


def _is_port_buffer(name):
    return name.rpartition(".")[2] in OFFICIAL_MS_BUFFERS


def is_official_ms_layout(params) -> bool:
    """True for a model ``{name: array}`` in the official MindSpore port's layout: it stores a computed
    buffer (``relative_position_index``, ``attn_mask``), which this package's checkpoints never do."""
    return any(_is_port_buffer(k) for k in params)


def official_ms_buffer(name, value):
    """A stored port buffer in the shape this package computes it: ``attn_mask`` (1, nW, 1, N, N) is
    upstream's (nW, N, N); ``relative_position_index`` is (N, N) in both."""
    shape = np.shape(value)
    if name.endswith("attn_mask") and len(shape) == 5 and shape[0] == 1 and shape[2] == 1:
        return np.reshape(value, (shape[1], shape[3], shape[4]))
    return value


def official_ms_shapes(params):
    """``{name: shape}`` of a port checkpoint with its buffers in this package's (and upstream's)
    shapes, for inferring the architecture (Swin's resolution comes from the ``attn_mask`` count)."""
    return {k: tuple(np.shape(official_ms_buffer(k, v) if _is_port_buffer(k) else v)) for k, v in params.items()}


def computed_buffers(net):
    """``{name: array}`` of the tensors ``net`` computes that upstream stores as buffers (each cell's
    ``torch_buffers()``, e.g. Swin's ``relative_position_index`` and ``attn_mask``)."""
    out = {}

    def visit(cell, prefix):
        buffers = getattr(cell, "torch_buffers", None)
        if buffers is not None:
            for name, value in buffers().items():
                out[prefix + name] = value
        for child_name, child in cell.name_cells().items():
            visit(child, f"{prefix}{child_name}.")

    visit(net, "")
    return out


def adapt_official_ms(params, net):
    """The official MindSpore port's ``{name: array}`` in this package's layout for ``net``:
    ``(params, problems)``. Each stored buffer must equal what ``net`` computes and is then dropped;
    a buffer ``net`` computes must be stored; each BN's missing ``num_batches_tracked`` is filled with
    ``OFFICIAL_MS_NUM_BATCHES_TRACKED``. ``problems`` (one string per kind) is empty when it fits."""
    expected = computed_buffers(net)
    stored = [k for k in params if _is_port_buffer(k)]
    unexpected = [k for k in stored if k not in expected]
    missing = [k for k in expected if _is_port_buffer(k) and k not in params]
    differ = []
    for k in stored:
        if k in expected:
            value = np.asarray(official_ms_buffer(k, params[k]))
            if value.shape != np.shape(expected[k]) or not np.array_equal(value, expected[k]):
                differ.append(f"{k} {list(np.shape(params[k]))}")
    out = {k: v for k, v in params.items() if not _is_port_buffer(k)}
    for name, _ in net.parameters_and_names():
        if name.endswith(".num_batches_tracked") and name not in out:
            out[name] = np.asarray(OFFICIAL_MS_NUM_BATCHES_TRACKED, np.int64)
    return out, name_problems(("computed buffers missing", missing),
                              ("buffers the model does not compute", unexpected), (WRONG_BUFFERS, differ))


def load_param_dict(net, params, what="checkpoint"):
    """Strictly copy ``{name: array}`` into ``net``; raises naming every problem, loads nothing then.
    The official MindSpore port's layout is recognised and adapted (:func:`adapt_official_ms`)."""
    problems = []
    if is_official_ms_layout(params):
        params, problems = adapt_official_ms(params, net)
        what = f"{what} (the official MindSpore port's layout)"
    own = dict(net.parameters_and_names())
    missing = [k for k in own if k not in params]
    unexpected = [k for k in params if k not in own]
    mismatched = [f"{k} {list(np.shape(params[k]))} vs model {list(own[k].shape)}"
                  for k in own if k in params and tuple(np.shape(params[k])) != tuple(own[k].shape)]
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

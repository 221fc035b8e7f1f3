"""The PyTorch <-> MindSpore name table and the state-dict walk.

MindSpore parameter names equal the PyTorch names except for the norm suffixes below.
Tensors upstream keeps as buffers that the MindSpore model computes instead
(``relative_position_index``, ``attn_mask``) come from each cell's ``torch_buffers()``.
The walk visits each cell's own parameters, then its buffers, then its children, which is
the order of ``torch.nn.Module.state_dict()``.
"""
from collections import OrderedDict

import numpy as np

from ..errors import WRONG_BUFFERS, CheckpointError, name_problems

# MindSpore suffix -> PyTorch suffix (LayerNorm and BatchNorm); every other name is identical.
MS_TO_TORCH_SUFFIX = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
TORCH_TO_MS_SUFFIX = {v: k for k, v in MS_TO_TORCH_SUFFIX.items()}


def ms_to_torch_name(name):
    head, _, last = name.rpartition(".")
    last = MS_TO_TORCH_SUFFIX.get(last, last)
    return f"{head}.{last}" if head else last


def torch_layout(net):
    """The PyTorch state-dict layout of ``net``: ``[(torch_name, ms_param or None, buffer or None)]``."""
    entries = []

    def visit(cell, prefix):
        for name, param in cell._params.items():
            if param is not None:
                entries.append((prefix + ms_to_torch_name(name), param, None))
        buffers = getattr(cell, "torch_buffers", None)
        if buffers is not None:
            for name, value in buffers().items():
                entries.append((prefix + name, None, value))
        for child_name, child in cell.name_cells().items():
            visit(child, f"{prefix}{child_name}.")

    visit(net, "")
    return entries


def _raise_if(problems, what):
    if problems:
        raise CheckpointError(f"{what} does not fit the model; " + "; ".join(problems))


def torch_to_ms(net, torch_sd, what="checkpoint"):
    """Map a PyTorch state dict (name -> array-like with ``.shape``/``numpy()``) onto ``net``.

    Returns ``OrderedDict[ms_name, np.ndarray]`` keeping the source dtypes. Every key must be
    used and every parameter present with its shape; buffers, when present, must equal what the
    model computes. Raises :class:`CheckpointError` listing all problems.
    """
    out = OrderedDict()
    missing, mismatched, wrong_buffers = [], [], []
    used = set()
    for tname, param, buffer in torch_layout(net):
        if tname not in torch_sd:
            if param is not None:
                missing.append(tname)
            continue  # a computed buffer may be absent (newer tools drop them)
        used.add(tname)
        src = torch_sd[tname]
        expected = tuple(param.shape) if param is not None else tuple(buffer.shape)
        if tuple(src.shape) != expected:
            mismatched.append(f"{tname} {list(src.shape)} vs model {list(expected)}")
            continue
        value = _as_numpy(src)
        if param is not None:
            out[param.name] = value
        elif not np.array_equal(value, buffer):
            wrong_buffers.append(tname)
    unexpected = [k for k in torch_sd if k not in used]
    _raise_if(name_problems(("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", mismatched), (WRONG_BUFFERS, wrong_buffers)), what)
    return out


def ms_to_torch(net, ms_params, what="checkpoint"):
    """Map MindSpore parameters (name -> array) of ``net`` to a PyTorch state dict in upstream order,
    writing the computed buffers back. Raises :class:`CheckpointError` listing all problems."""
    out = OrderedDict()
    missing, mismatched = [], []
    used = set()
    for tname, param, buffer in torch_layout(net):
        if param is None:
            out[tname] = np.array(buffer, copy=True)
            continue
        if param.name not in ms_params:
            missing.append(param.name)
            continue
        used.add(param.name)
        value = np.asarray(ms_params[param.name])
        if tuple(value.shape) != tuple(param.shape):
            mismatched.append(f"{param.name} {list(value.shape)} vs model {list(param.shape)}")
            continue
        out[tname] = value
    unexpected = [k for k in ms_params if k not in used]
    _raise_if(name_problems(("missing parameters", missing), ("unexpected parameters", unexpected),
                            ("shape mismatches", mismatched)), what)
    return out


def _as_numpy(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)

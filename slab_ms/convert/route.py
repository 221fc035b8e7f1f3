"""Which converter a checkpoint goes to, decided from one read of the file.

``route_torch`` and ``route_mindspore`` read the input once and return a :class:`Route`: the kind
(a LLaMA, a detection backbone or detector, a classification model) and what was read, which the
converters take instead of reading the file again. ``convert.py`` and the API
(:mod:`slab_ms.convert.api`) both route here.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..checkpoint import OFFICIAL_MS, is_official_ms_layout, model_params, read_ms_checkpoint
from ..errors import CheckpointError
from ..models.llama import is_llama_layout
from ..models.registry import list_models
from .mapping import ms_to_torch_name
from .torch_io import extract_state_dict, read_torch_checkpoint

LLAMA, DETECTION, CLASSIFICATION = "llama", "detection", "classification"
BACKBONE = "backbone."
OUT_NORM = re.compile(r"norm(\d+)\.(weight|bias)$")
_HF_SUFFIXES = (".safetensors", ".index.json")


@dataclass
class Route:
    """``kind``: LLAMA, DETECTION or CLASSIFICATION; ``loaded``: what routing read (the loaded
    PyTorch object, or the MindSpore checkpoint's ``{name: array}``), None when it read nothing;
    ``layout``: ``checkpoint.OFFICIAL_MS`` for the SLAB authors' MindSpore port's layout, else None."""
    kind: str
    loaded: Any = None
    layout: str | None = None


def is_detection_backbone_keys(keys) -> bool:
    """True for a detection backbone's state dict (torch names, no ``backbone.`` prefix): Swin
    keys plus output norms ``norm<i>.*`` and no classifier or final norm."""
    keys = set(keys)
    return ("patch_embed.proj.weight" in keys and any(OUT_NORM.match(k) for k in keys)
            and "head.weight" not in keys and not any(k.startswith("norm.") for k in keys))


def is_mmdet_keys(keys) -> bool:
    """True for mmdet's detector layout: some key under ``backbone.``."""
    return any(isinstance(k, str) and k.startswith(BACKBONE) for k in keys)


def strip_module(sd):
    """A state dict without DataParallel's ``module.`` prefix (as mmcv strips it)."""
    if sd and all(k.startswith("module.") for k in sd):
        return OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return sd


def _kind_of_model(model: str) -> str:
    if model in list_models("language"):
        return LLAMA
    return DETECTION if model in list_models("detection") else CLASSIFICATION


def _torch_holds_llama(obj) -> bool:
    if isinstance(obj, dict) and not is_llama_layout(obj):
        for k in ("model", "state_dict"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    return isinstance(obj, dict) and is_llama_layout(obj)


def route_torch(path: str, model: str | None = None, key: str | None = None) -> Route:
    """Route a PyTorch-side input: a Hugging Face folder or ``.safetensors``/shard index is a LLaMA;
    a ``.pth``/``.bin`` file is read once and routed by ``model`` or by its keys."""
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(_HF_SUFFIXES):
        return Route(LLAMA)
    obj = read_torch_checkpoint(path)
    if model:
        return Route(_kind_of_model(model), obj)
    if _torch_holds_llama(obj):
        return Route(LLAMA, obj)
    try:
        sd, _ = extract_state_dict(obj, key=key, path=path)
    except CheckpointError:
        return Route(CLASSIFICATION, obj)   # the converter reports what is wrong with it
    sd = strip_module(sd)
    detection = is_mmdet_keys(sd) or is_detection_backbone_keys(sd)
    return Route(DETECTION if detection else CLASSIFICATION, obj)


def route_mindspore(path: str, model: str | None = None, sidecar: str | None = None) -> Route:
    """Route a MindSpore ``.ckpt``: read once, then by ``model``, a LLaMA ``.config.json``
    sidecar (``sidecar``: its path), or the checkpoint's names. The official MindSpore port's layout
    (computed buffers stored) is recognised here and marked ``layout=OFFICIAL_MS``."""
    path = os.fspath(path)
    params = read_ms_checkpoint(path)
    if is_official_ms_layout(model_params(params)):   # the authors' port: Swin-T-RepBN, a classifier
        return Route(_kind_of_model(model) if model else CLASSIFICATION, params, OFFICIAL_MS)
    if model:
        return Route(_kind_of_model(model), params)
    if (sidecar and os.path.isfile(sidecar)) or is_llama_layout(params):
        return Route(LLAMA, params)
    detection = is_detection_backbone_keys(ms_to_torch_name(k) for k in model_params(params))
    return Route(DETECTION if detection else CLASSIFICATION, params)

"""PyTorch <-> MindSpore checkpoint conversion (the library behind ``convert.py``): each input is
read once by :mod:`.route` and goes to the converter of its kind (a Hugging Face LLaMA, a
detection backbone, a classification model)."""
from __future__ import annotations

import numpy as np

from ..checkpoint import OFFICIAL_MS, adapt_official_ms, model_params, official_ms_shapes, save_ms_checkpoint
from ..errors import CheckpointError
from . import detection, hf
from .common import build_for_conversion, check_output, resolve_architecture
from .mapping import ms_to_torch, ms_to_torch_name, torch_to_ms
from .route import DETECTION, LLAMA, Route, route_mindspore, route_torch
from .torch_io import extract_state_dict, write_torch_state_dict

__all__ = ["mindspore_to_torch", "resolve_architecture", "torch_to_mindspore"]


def torch_to_mindspore(input_path: str, output_path: str, model: str | None = None, overrides: dict | None = None,
                       key: str | None = None, force: bool = False, backbone_only: bool = False,
                       route: Route | None = None) -> tuple[str, dict, int]:
    """Convert a PyTorch checkpoint (or a Hugging Face LLaMA folder or file) to a MindSpore
    ``.ckpt``. Returns ``(name, overrides, n_tensors)``.

    mmdet detection checkpoints (``backbone.`` keys) and detection backbones go to
    :mod:`slab_ms.convert.detection` (``backbone_only`` skips a detector's neck and heads).
    ``route``: the input as :func:`.route.route_torch` read it (read here when not given)."""
    route = route or route_torch(input_path, model, key)
    if route.kind == LLAMA:
        return hf.hf_to_mindspore(input_path, output_path, model, overrides, key, force, loaded=route.loaded)
    if route.kind == DETECTION:
        r = detection.detection_torch_to_mindspore(input_path, output_path, model, overrides, key, backbone_only,
                                                   force, loaded=route.loaded)
        return r.name, r.overrides, r.n_tensors
    check_output(output_path, force)
    sd, _ = extract_state_dict(route.loaded, key=key, path=input_path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    name, overrides = resolve_architecture(model, overrides, shapes, input_path)
    net = build_for_conversion(name, overrides)
    params = torch_to_ms(net, sd, what=f"{input_path} (as {name})")
    save_ms_checkpoint(params, output_path)
    return name, overrides, len(params)


def _torch_shapes_of_ms(params):
    """PyTorch-style keys for architecture inference from a MindSpore checkpoint (``params``: its
    arrays or their shapes)."""
    return {ms_to_torch_name(k): tuple(v if isinstance(v, tuple) else np.shape(v)) for k, v in params.items()}


def mindspore_to_torch(input_path: str, output_path: str, model: str | None = None, overrides: dict | None = None,
                       force: bool = False, wrap_key: str = "model", route: Route | None = None,
                       hf_format: str = "safetensors") -> tuple[str, dict, int]:
    """Convert a MindSpore ``.ckpt`` to a PyTorch file loadable by the official model with strict=True.
    A detection backbone is written as mmdet saves it (:mod:`slab_ms.convert.detection`), a LLaMA
    as a Hugging Face folder (``hf_format``: safetensors or bin). The official MindSpore port's
    Swin-T-RepBN checkpoint (``route.layout == OFFICIAL_MS``) is adapted as ``slab_ms.load_checkpoint``
    adapts it. Returns ``(name, overrides, n_tensors)``."""
    route = route or route_mindspore(input_path, model, hf.sidecar_path(input_path))
    if route.kind == LLAMA:
        return hf.mindspore_to_hf(input_path, output_path, model, overrides, force, hf_format, loaded=route.loaded)
    if route.kind == DETECTION:
        r = detection.detection_mindspore_to_torch(input_path, output_path, model, overrides, force,
                                                   loaded=route.loaded)
        return r.name, r.overrides, r.n_tensors
    check_output(output_path, force)
    params = model_params(route.loaded)  # a training checkpoint: its model part
    official = route.layout == OFFICIAL_MS
    shapes = official_ms_shapes(params) if official else params
    name, overrides = resolve_architecture(model, overrides, _torch_shapes_of_ms(shapes), input_path)
    net = build_for_conversion(name, overrides)
    what = f"{input_path} (as {name})"
    if official:   # its stored buffers checked against net's and dropped, num_batches_tracked filled
        params, problems = adapt_official_ms(params, net)
        what = f"{input_path} (the official MindSpore port's layout, as {name})"
        if problems:
            raise CheckpointError(f"{what} does not fit the model; " + "; ".join(problems))
    sd = ms_to_torch(net, params, what=what)
    write_torch_state_dict(output_path, sd, wrap_key=wrap_key)
    return name, overrides, len(sd)

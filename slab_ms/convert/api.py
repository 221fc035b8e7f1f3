"""PyTorch <-> MindSpore checkpoint conversion (the library behind ``convert.py``)."""
import os

import numpy as np

from ..checkpoint import model_params, read_ms_checkpoint, save_ms_checkpoint
from ..errors import CheckpointError
from ..models.registry import create_model, infer_model
from .mapping import ms_to_torch, ms_to_torch_name, torch_to_ms
from .torch_io import extract_state_dict, read_torch_checkpoint, write_torch_state_dict


def resolve_architecture(model, overrides, shapes, path, infer=infer_model, what="the architecture"):
    """``(name, overrides)``: as given, or inferred from the checkpoint's keys and shapes by ``infer``."""
    if model:
        return model, dict(overrides or {})
    found = infer(shapes)
    if found is None:
        raise CheckpointError(f"{path}: cannot infer {what} from its keys; pass --model")
    name, inferred = found
    inferred.update(overrides or {})
    return name, inferred


def _check_output(output, force):
    if os.path.exists(output) and not force:
        raise CheckpointError(f"{output} exists; pass --force to overwrite")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise CheckpointError(f"output directory {directory} does not exist")


def _build(name, overrides):
    try:
        return create_model(name, **overrides)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"cannot build {name} with {overrides}: {e}") from None


def torch_to_mindspore(input_path, output_path, model=None, overrides=None, key=None, force=False,
                       backbone_only=False):
    """Convert a PyTorch checkpoint to a MindSpore ``.ckpt``. Returns ``(name, overrides, n_tensors)``.

    mmdet detection checkpoints (``backbone.`` keys) and detection backbones go to
    :mod:`slab_ms.convert.detection` (``backbone_only`` skips a detector's neck and heads)."""
    from . import hf
    if hf.is_hf_input(input_path, model):   # a Hugging Face LLaMA folder or file
        return hf.hf_to_mindspore(input_path, output_path, model, overrides, key, force)
    from .detection import detection_torch_to_mindspore, wants_detection
    if wants_detection(model, torch_path=input_path, key=key):
        r = detection_torch_to_mindspore(input_path, output_path, model, overrides, key, backbone_only, force)
        return r.name, r.overrides, r.n_tensors
    _check_output(output_path, force)
    sd, _ = extract_state_dict(read_torch_checkpoint(input_path), key=key, path=input_path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    name, overrides = resolve_architecture(model, overrides, shapes, input_path)
    net = _build(name, overrides)
    params = torch_to_ms(net, sd, what=f"{input_path} (as {name})")
    save_ms_checkpoint(params, output_path)
    return name, overrides, len(params)


def _torch_shapes_of_ms(params):
    """PyTorch-style keys for architecture inference from a MindSpore checkpoint."""
    return {ms_to_torch_name(k): tuple(np.shape(v)) for k, v in params.items()}


def mindspore_to_torch(input_path, output_path, model=None, overrides=None, force=False, wrap_key="model"):
    """Convert a MindSpore ``.ckpt`` to a PyTorch file loadable by the official model with strict=True.
    A detection backbone is written as mmdet saves it (:mod:`slab_ms.convert.detection`)."""
    from . import hf
    if hf.is_llama_ms_checkpoint(input_path, model):   # a LLaMA: written as a Hugging Face folder
        return hf.mindspore_to_hf(input_path, output_path, model, overrides, force)
    from .detection import detection_mindspore_to_torch, wants_detection
    if wants_detection(model, ms_path=input_path):
        r = detection_mindspore_to_torch(input_path, output_path, model, overrides, force)
        return r.name, r.overrides, r.n_tensors
    _check_output(output_path, force)
    params = model_params(read_ms_checkpoint(input_path))  # a training checkpoint: its model part
    shapes = _torch_shapes_of_ms(params)
    name, overrides = resolve_architecture(model, overrides, shapes, input_path)
    net = _build(name, overrides)
    sd = ms_to_torch(net, params, what=f"{input_path} (as {name})")
    write_torch_state_dict(output_path, sd, wrap_key=wrap_key)
    return name, overrides, len(sd)

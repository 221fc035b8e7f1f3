"""What every converter shares: the architecture as given or inferred, the output check and the
model built to map names onto."""
from __future__ import annotations

import os
from typing import Callable

from ..errors import CheckpointError
from ..models.registry import create_model, infer_model


def resolve_architecture(model: str | None, overrides: dict | None, shapes: dict, path: str,
                         infer: Callable = infer_model, what: str = "the architecture") -> tuple[str, dict]:
    """``(name, overrides)``: as given, or inferred from the checkpoint's keys and shapes by ``infer``."""
    if model:
        return model, dict(overrides or {})
    found = infer(shapes)
    if found is None:
        raise CheckpointError(f"{path}: cannot infer {what} from its keys; pass --model")
    name, inferred = found
    inferred.update(overrides or {})
    return name, inferred


def check_output(output: str, force: bool) -> None:
    """Refuse an existing output (unless ``force``) or a missing output folder, before any work."""
    if os.path.exists(output) and not force:
        raise CheckpointError(f"{output} exists; pass --force to overwrite")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise CheckpointError(f"output directory {directory} does not exist")


def build_for_conversion(name: str, overrides: dict):
    """The registered model ``name`` with ``overrides``, or a CheckpointError saying why not."""
    try:
        return create_model(name, **overrides)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"cannot build {name} with {overrides}: {e}") from None

"""Command-line tools. Each module's ``main(argv=None)`` returns an exit status; they are installed
as console scripts (``slab-train``, ``slab-validate``, ``slab-convert``, ``slab-export``,
``slab-infer``, ``slab-generate``) and run by the scripts at the repository root (``python train.py ...``)."""
import os
import sys

from ..errors import CheckpointError, ConfigError, SlabError


def report(error):
    """Print ``error: <first line>`` to stderr; returns the exit status (2 for a bad config or
    flag, 1 for anything else)."""
    text = str(error).strip()
    print(f"error: {text.splitlines()[0] if text else type(error).__name__}", file=sys.stderr)
    return 2 if isinstance(error, ConfigError) else 1


def prog(default):
    """The name the tool was started as, for its usage line: ``slab-train`` for the console script,
    ``train.py`` for ``python train.py``; ``default`` when neither (``main()`` called from Python)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name.endswith(".exe"):   # console scripts on Windows
        name = name[:-4]
    return name if name.startswith("slab-") or (name.endswith(".py") and name != "__main__.py") else default


def check_model(name):
    """A ConfigError (exit 2) naming the closest registered models when ``name`` is not one."""
    from ..models.registry import is_model, unknown_model_error
    if not is_model(name):
        raise unknown_model_error(name)


def classes_hint(message, ckpt_path, flag):
    """When a checkpoint does not fit because its classifier (``head.*``) has another number of
    classes: ``; the checkpoint's classifier has N classes: pass <flag N>``; else ``""``."""
    if "head." not in message:
        return ""
    try:
        from ..checkpoint import model_params, read_ms_checkpoint
        weight = model_params(read_ms_checkpoint(ckpt_path)).get("head.weight")
    except (SlabError, OSError, ValueError):
        return ""
    if weight is None or len(getattr(weight, "shape", ())) != 2:
        return ""
    n = int(weight.shape[0])
    return f"; the checkpoint's classifier has {n} classes: pass {flag.format(n=n)}"


__all__ = ["report", "prog", "check_model", "classes_hint", "CheckpointError", "ConfigError", "SlabError"]

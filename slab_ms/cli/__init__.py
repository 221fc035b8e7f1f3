"""Command-line tools. Each module's ``main(argv=None)`` returns an exit status; they are installed
as console scripts (``slab-train``, ``slab-validate``, ``slab-convert``, ``slab-export``,
``slab-infer``) and run by the scripts at the repository root (``python train.py ...``)."""
import sys

from ..errors import CheckpointError, ConfigError, SlabError


def report(error):
    """Print ``error: <first line>`` to stderr; returns the exit status (2 for a bad config or
    flag, 1 for anything else)."""
    text = str(error).strip()
    print(f"error: {text.splitlines()[0] if text else type(error).__name__}", file=sys.stderr)
    return 2 if isinstance(error, ConfigError) else 1


__all__ = ["report", "CheckpointError", "ConfigError", "SlabError"]

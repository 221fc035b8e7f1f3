"""The errors slab_ms raises for the user: each carries a one-line message that the CLIs print
as ``error: <message>`` (exit 2 for a bad config or flag, 1 otherwise)."""


class SlabError(Exception):
    """Base of the errors below; never raised itself."""


class ConfigError(SlabError, ValueError):
    """A bad config file, key, value or flag, a data tree that does not fit it (missing split,
    empty class folder, wrong number of classes, too many unreadable images), or an unknown model."""


class CheckpointError(SlabError, ValueError):
    """A checkpoint that cannot be read, is hostile, or does not fit the model."""


class TrainingError(SlabError, RuntimeError):
    """A run that cannot go on: a diverged loss, or resume state that does not line up with the run."""


WRONG_BUFFERS = "buffers that differ from what the model computes (window size or resolution differ?)"


def name_problems(*groups: tuple) -> list:
    """:func:`summarize_names` of each ``(kind, names)`` group that has names."""
    return [summarize_names(kind, names) for kind, names in groups if names]


def summarize_names(kind: str, names: list, limit: int = 8) -> str:
    """``"<n> <kind>: a, b, ... (+k more)"``: a list of names inside a one-line message."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)} {kind}: {', '.join(names[:limit])}{more}"

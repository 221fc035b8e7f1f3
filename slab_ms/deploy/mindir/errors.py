"""The one error the Lite 2.0 rewrite raises."""
from ...errors import SlabError


class CompatError(SlabError, ValueError):
    """A MindIR the Lite 2.0 rewrite cannot handle; the message is one line."""

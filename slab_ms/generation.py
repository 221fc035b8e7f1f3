"""Old import path of :mod:`slab_ms.lm.generation`, kept for scripts written against it."""
from .lm.generation import GenerationStats, generate, generate_text  # noqa: F401

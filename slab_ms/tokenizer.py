"""Old import path of :mod:`slab_ms.lm.tokenizer`, kept for scripts written against it."""
from .lm.tokenizer import Tokenizer, load_tokenizer  # noqa: F401

"""A small PyTorch reference of the SLAB models, for parity tests and ``convert.py --verify``.

Kept apart from ``slab_ms`` (which never imports torch). Module structure and buffer
registration follow upstream (github xinghaochen/SLAB, ``classification/models``) so that
state dicts have the upstream layout key for key.
"""
from .swin import MODELS, create_model  # noqa: F401

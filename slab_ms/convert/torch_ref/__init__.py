"""A small PyTorch reference of the SLAB models, for parity tests and ``convert.py --verify``.

Only ``convert.py --verify`` and the tests import it (the ``verify`` extra installs torch); nothing
else in ``slab_ms`` imports torch. Module structure and buffer
registration follow upstream (github xinghaochen/SLAB, ``classification/models``) so that
state dicts have the upstream layout key for key.
"""
from . import cswin, deit, pvt, swin

_FAMILIES = (swin, deit, pvt, cswin)
MODELS = {name: cfg for family in _FAMILIES for name, cfg in family.MODELS.items()}


def create_model(name, **overrides):
    """Build a registered model (any family) with its defaults updated by ``overrides``."""
    for family in _FAMILIES:
        if name in family.MODELS:
            return family.create_model(name, **overrides)
    raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")

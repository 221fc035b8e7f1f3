from . import cswin, deit, pvt, swin  # noqa: F401  (register the families)
from .registry import create_model, is_model, list_models, register_model  # noqa: F401

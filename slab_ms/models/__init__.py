from . import cswin, deit, llama, pvt, swin, swin_det  # noqa: F401  (register the families)
from .registry import create_model, is_model, list_models, register_model  # noqa: F401

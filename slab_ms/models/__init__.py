from . import swin  # noqa: F401  (registers the Swin family)
from .registry import create_model, is_model, list_models, register_model  # noqa: F401

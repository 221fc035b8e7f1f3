"""SLAB for MindSpore: PRepBN, Simplified Linear Attention and the SLAB/PRepBN model zoo."""
from ._env import configure_onednn, quiet_cell_teardown

configure_onednn()

from .checkpoint import load_checkpoint, load_param_dict, read_ms_checkpoint, save_ms_checkpoint  # noqa: E402
from .errors import CheckpointError, ConfigError, SlabError, TrainingError  # noqa: E402
from .layers import PRepBN, RepBN, SimplifiedLinearAttention  # noqa: E402
from .layers.reparam import remaining_norms, reparameterize  # noqa: E402
from .models import create_model, is_model, list_models, register_model  # noqa: E402
from .models.registry import register_with_mindcv  # noqa: E402

register_with_mindcv()
quiet_cell_teardown()   # no 'Exception ignored in Cell.__del__' at exit: see _env.py

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "PRepBN", "RepBN", "SimplifiedLinearAttention", "SlabError",
           "TrainingError", "create_model", "is_model", "list_models", "load_checkpoint", "load_param_dict",
           "read_ms_checkpoint", "register_model", "remaining_norms", "reparameterize", "save_ms_checkpoint"]

from .prepbn import PRepBN, RepBN, TokenBatchNorm, build_norm  # noqa: F401
from .sla import SimplifiedLinearAttention  # noqa: F401

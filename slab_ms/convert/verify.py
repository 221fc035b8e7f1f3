"""Parity of a converted checkpoint: the PyTorch reference (:mod:`.torch_ref`, needs torch) on the
.pth against MindSpore (GRAPH_MODE) on the .ckpt, eval mode, one random batch."""
from __future__ import annotations

import numpy as np

from ..checkpoint import load_checkpoint
from ..errors import CheckpointError
from ..models.registry import create_model
from .torch_io import extract_state_dict, read_torch_checkpoint


def verify_conversion(model: str, overrides: dict, torch_path: str, ms_path: str, key: str | None = None,
                      seed: int = 0) -> tuple[float, float]:
    """``(max|diff|, relative diff)`` of the two models' logits on 2 random images."""
    import mindspore as ms
    try:
        import torch
        from . import torch_ref
    except ImportError as e:
        raise CheckpointError(f"--verify needs torch (pip install 'slab-ms[verify]'): {e}") from None
    sd, _ = extract_state_dict(read_torch_checkpoint(torch_path), key=key, path=torch_path)
    ref = torch_ref.create_model(model, **overrides)
    ref.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in sd.items()}, strict=True)
    ref.eval()
    net = create_model(model, **overrides)
    load_checkpoint(net, ms_path)
    net.set_train(False)
    ms.set_context(mode=ms.GRAPH_MODE)
    size = overrides.get("img_size", 224)
    x = np.random.default_rng(seed).standard_normal((2, overrides.get("in_chans", 3), size, size)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = net(ms.Tensor(x)).asnumpy()
    diff = float(np.abs(got - expected).max())
    return diff, diff / max(1.0, float(np.abs(expected).max()))

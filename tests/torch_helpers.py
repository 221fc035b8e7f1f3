"""Helpers that need torch (test-only dependency)."""
import torch

from slab_ms.convert import torch_ref


def randomize(model, seed=0, iter_fraction=0.5, alpha=0.7):
    """Give every tensor a non-trivial value: random weights and BN statistics, alpha != 1,
    PRepBN counters mid-schedule, num_batches_tracked != 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            last = name.rsplit(".", 1)[-1]
            if name.endswith("relative_position_index") or name.endswith("attn_mask") or last in ("warm",
                                                                                                 "total_step"):
                continue
            if last == "iter":
                total = model.state_dict()[name[: -len("iter")] + "total_step"]
                t.copy_((total.float() * iter_fraction).long())
            elif last == "num_batches_tracked":
                t.copy_(torch.randint(1, 1000, (), generator=g))
            elif last == "running_var":
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif last == "alpha":
                t.fill_(alpha)
            elif last == "weight" and t.ndim == 1:  # LayerNorm / BN scale
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            elif last == "running_mean":
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            else:  # weights, biases, position tables: the scale of upstream's trunc_normal(0.02) init
                t.copy_(0.02 * torch.randn(t.shape, generator=g))
    return model


def build_random(name, seed=0, **overrides):
    return randomize(torch_ref.create_model(name, **overrides), seed=seed)

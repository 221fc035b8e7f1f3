"""MindSpore models equal the PyTorch reference on fresh random weights, eval and training mode."""
import numpy as np
import pytest
import torch
import mindspore as ms

import slab_ms
from conftest import SMALL_VARIANTS, rel_err
from slab_ms.convert.api import torch_to_mindspore
from slab_ms.convert.mapping import ms_to_torch_name
from torch_helpers import build_random

def reference_and_converted(name, seed, tmp_path):
    """A small variant of ``name`` with random weights in the PyTorch reference, and the same
    weights in MindSpore through convert.py's torch -> MindSpore path."""
    overrides = dict(SMALL_VARIANTS[name], num_classes=7, drop_path_rate=0.0)
    ref = build_random(name, seed=seed, **overrides)
    pth, ckpt = tmp_path / "ref.pth", tmp_path / "ms.ckpt"
    torch.save({"model": ref.state_dict()}, pth)
    torch_to_mindspore(str(pth), str(ckpt), model=name, overrides=overrides)
    net = slab_ms.create_model(name, **overrides)
    slab_ms.load_checkpoint(net, str(ckpt))
    return ref, net


@pytest.mark.parametrize("name", sorted(SMALL_VARIANTS))
def test_mindspore_matches_pytorch_reference(name, tmp_path):
    ref, net = reference_and_converted(name, 3, tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)

    ref.eval()
    net.set_train(False)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    assert rel_err(net(ms.Tensor(x)).asnumpy(), expected) <= 1e-5

    ref.train()
    net.set_train(True)
    for _ in range(2):  # two steps: the second uses the counters and statistics the first left
        with torch.no_grad():
            expected = ref(torch.from_numpy(x)).numpy()
        assert rel_err(net(ms.Tensor(x)).asnumpy(), expected) <= 1e-5

    ms_params = {ms_to_torch_name(k): p for k, p in net.parameters_and_names()}  # keyed by PyTorch name
    for key, value in ref.state_dict().items():
        if key.endswith(("warm", "iter", "total_step", "num_batches_tracked")):
            assert int(ms_params[key].asnumpy()) == int(value), key
        elif key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(ms_params[key].asnumpy(), value.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=key)


@pytest.mark.parametrize("name", ["slab_swin_tiny", "slab_deit_tiny"])
def test_training_gradients_match_pytorch_reference(name, tmp_path):
    """One training step's loss and the gradient of every parameter equal PyTorch's (PRepBN mid-schedule:
    LayerNorm and the BatchNorm branch both carry gradient; BN uses this batch's statistics)."""
    ref, net = reference_and_converted(name, 5, tmp_path)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    y = np.array([1, 5])

    ref.train()
    loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    unused = {k for k, p in ref.named_parameters() if p.grad is None}   # e.g. SLAB-DeiT's cls_token
    expected = {k: p.grad.numpy() for k, p in ref.named_parameters() if k not in unused}

    from slab_ms.engine.train_step import NetWithLoss
    net.set_train(True)
    params = net.trainable_params()
    grad_fn = ms.value_and_grad(NetWithLoss(net, ms.nn.CrossEntropyLoss()), None, params)
    got_loss, grads = grad_fn(ms.Tensor(x), ms.Tensor(y.astype(np.int32)))
    assert abs(float(got_loss.asnumpy()) - loss.item()) <= 1e-5 * max(1.0, abs(loss.item()))
    got = {ms_to_torch_name(p.name): g.asnumpy() for p, g in zip(params, grads)}
    assert set(got) - unused == set(expected)
    largest = max(np.abs(g).max() for g in expected.values())
    for key, g in expected.items():   # float32 sums of many terms: relative to the tensor, with a floor
        err = np.abs(got[key] - g).max()
        assert err <= 1e-4 * np.abs(g).max() + 1e-6 * largest, (key, err, np.abs(g).max(), largest)

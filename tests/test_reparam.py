"""Re-parameterization (Lemma 4.1): fused eval output equals unfused, no norm left, exact
patch-embedding fold (the alpha * bias term upstream drops is kept)."""
import numpy as np
import pytest
import mindspore as ms

import slab_ms
from slab_ms.layers.prepbn import TokenBatchNorm

from conftest import SMALL_VARIANTS, SWIN_MINI, randomize_ms, rel_err

MINIS = {name: dict(kw, num_classes=10, drop_path_rate=0.0) for name, kw in SMALL_VARIANTS.items()}


def _pair(name, seed=0, **kw):
    cfg = dict(MINIS[name], **kw)
    a = randomize_ms(slab_ms.create_model(name, **cfg), seed, bias_scale=0.5)
    b = slab_ms.create_model(name, **cfg)
    slab_ms.load_param_dict(b, {k: v.asnumpy() for k, v in a.parameters_and_names()})
    return a, b


@pytest.mark.parametrize("name", sorted(MINIS))
def test_fused_equals_unfused_and_no_norm_remains(name):
    ref, fused = _pair(name)
    assert slab_ms.remaining_norms(ref)   # there is something to fold
    ref.set_train(False)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32))
    expected = ref(x).asnumpy()
    n_before = len(list(fused.get_parameters()))
    slab_ms.reparameterize(fused)
    assert slab_ms.remaining_norms(fused) == []
    assert len(list(fused.get_parameters())) < n_before
    got = fused(x).asnumpy()
    assert rel_err(got, expected) < 1e-5, rel_err(got, expected)
    assert np.abs(expected).max() > 0.1   # a signal, not a vanishing output


def test_patch_embedding_fold_keeps_alpha_times_bias():
    """Upstream's patch-embedding fold drops alpha * conv bias; that mistake must show here."""
    ref, fused = _pair("slab_swin_tiny", seed=3)
    ref.set_train(False)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32))
    expected = ref(x).asnumpy()
    conv_bias = ref.patch_embed.proj.bias.asnumpy().astype(np.float64)
    alpha = float(ref.patch_embed.norm.norm2.alpha.asnumpy()[0])
    slab_ms.reparameterize(fused)
    assert rel_err(fused(x).asnumpy(), expected) < 1e-5
    proj = fused.patch_embed.proj   # emulate the upstream fold: bias' = gamma/std * (c - mean) + beta
    proj.bias.set_data(ms.Tensor((proj.bias.asnumpy() - alpha * conv_bias).astype(np.float32)))
    assert rel_err(fused(x).asnumpy(), expected) > 1e-3


def test_fold_of_an_unfinished_schedule_is_the_eval_network():
    """PRepBN's eval form is RepBN whatever the counters say; the fused model computes exactly that."""
    ref, fused = _pair("slab_swin_tiny", seed=5)
    for cell in (c for _, c in ref.cells_and_names() if hasattr(c, "set_schedule")):
        assert cell.lam() == 1.0   # untouched counters: the schedule has not started
    ref.set_train(False)
    x = ms.Tensor(np.random.default_rng(4).standard_normal((1, 3, 224, 224)).astype(np.float32))
    expected = ref(x).asnumpy()
    slab_ms.reparameterize(fused)
    assert rel_err(fused(x).asnumpy(), expected) < 1e-5


def test_layernorm_models_keep_their_norms():
    net = slab_ms.create_model("slab_swin_tiny", **dict(SWIN_MINI, norm="layernorm"))
    slab_ms.reparameterize(net)
    assert len(slab_ms.remaining_norms(net)) > 0   # LayerNorm is not a fixed affine map: nothing folds
    assert not any(isinstance(c, TokenBatchNorm) for _, c in net.cells_and_names())


def test_a_network_that_already_ran_recompiles_after_fusion():
    """GRAPH_MODE caches the unfused graph; running it with folded weights would be wrong."""
    ref, net = _pair("slab_swin_tiny", seed=9)
    ref.set_train(False)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(6).standard_normal((1, 3, 224, 224)).astype(np.float32))
    expected = ref(x).asnumpy()
    assert rel_err(net(x).asnumpy(), expected) < 1e-6   # compiled once, unfused
    slab_ms.reparameterize(net)
    assert rel_err(net(x).asnumpy(), expected) < 1e-5


def test_a_norm_never_folds_into_a_conv_that_pads_its_input():
    """Zero padding sees 0, not the norm's shift b: such a fold would be wrong at the borders."""
    from mindspore import nn
    from slab_ms.layers.prepbn import RepBN
    from slab_ms.layers.reparam import fold_norm
    padded = nn.Conv2d(8, 8, 3, pad_mode="pad", padding=1, has_bias=True)
    with pytest.raises(ValueError, match="unpadded"):
        fold_norm(RepBN(8), padded, "before")
    unpadded = nn.Conv2d(8, 8, 2, stride=2, pad_mode="valid", has_bias=True)
    assert fold_norm(RepBN(8), unpadded, "before") is unpadded

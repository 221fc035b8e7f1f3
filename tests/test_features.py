"""features_only=True / out_indices for every hierarchical classification model (Swin, PVT,
CSwin), as mindcv's create_model offers it (models/features.py)."""
import os

import numpy as np
import pytest
import mindspore as ms

import slab_ms
from conftest import GOLDEN_MINIS, SMALL_VARIANTS
from slab_ms.convert.api import torch_to_mindspore
from slab_ms.errors import ConfigError
from slab_ms.layers.reparam import norm_affine
from slab_ms.models.features import FeatureExtractor

HIERARCHICAL = sorted(n for n in SMALL_VARIANTS if n.startswith(("slab_swin", "swin", "pvt", "slab_pvt", "slab_cswin")))
GOLDEN_OF = {model: golden for golden, (model, _) in GOLDEN_MINIS.items()}
CHANNELS = {"embed_dim": lambda kw: [kw["embed_dim"] * 2 ** i for i in range(4)],
            "embed_dims": lambda kw: list(kw["embed_dims"])}


def expected_channels(kw):
    return CHANNELS["embed_dims" if "embed_dims" in kw else "embed_dim"](kw)


def test_every_hierarchical_family_is_covered():
    assert len(HIERARCHICAL) == 12
    assert {n for n in slab_ms.list_models() if not n.startswith(("deit", "slab_deit"))} == set(HIERARCHICAL)


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_features_only_shapes_and_channels(name, reference_dir, tmp_path):
    """Four NCHW maps at strides 4-32 with the stage widths. For the models with a golden mini
    (upstream weights and logits), the last map also reproduces upstream's logits: head(mean)
    after the final norm's eval affine where the family has one (Swin, CSwin; PVT has none)."""
    golden = GOLDEN_OF.get(name)
    kw = dict(GOLDEN_MINIS[golden][1]) if golden else dict(SMALL_VARIANTS[name], num_classes=10)
    net = slab_ms.create_model(name, **kw, features_only=True, out_indices=(0, 1, 2, 3))
    assert isinstance(net, FeatureExtractor)
    assert net.out_channels == expected_channels(kw)
    assert net.reductions == [4, 8, 16, 32]
    if golden:
        torch_to_mindspore(os.path.join(reference_dir, "golden", golden + ".pth"), str(tmp_path / "m.ckpt"))
        slab_ms.load_checkpoint(net, str(tmp_path / "m.ckpt"))   # classification checkpoint, names unchanged
        ref = np.load(os.path.join(reference_dir, "golden", golden + ".npz"))
        x = ref["input"]
    else:
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    net.set_train(False)
    outs = net(ms.Tensor(x))
    assert [tuple(o.shape) for o in outs] == [(x.shape[0], c, 224 // r, 224 // r)
                                              for c, r in zip(net.out_channels, net.reductions)]
    if golden:
        inner = net.net
        pooled = outs[-1].asnumpy().mean(axis=(2, 3)).astype(np.float64)
        if isinstance(getattr(inner, "norm", None), ms.nn.Cell):
            a, b = norm_affine(inner.norm)
            pooled = pooled * a + b
        w, c = inner.head.weight.asnumpy().astype(np.float64), inner.head.bias.asnumpy().astype(np.float64)
        logits = pooled @ w.T + c
        err = np.abs(logits - ref["logits_eval"]).max() / max(1.0, np.abs(ref["logits_eval"]).max())
        assert err < 1e-5, err   # measured 1.2e-7 (slab_pvt) to 1.4e-6 (slab_swin, slab_cswin)


def test_out_indices_subset_through_mindcv():
    import mindcv
    kw = SMALL_VARIANTS["pvt_tiny_prepbn"]
    net = mindcv.create_model("pvt_tiny_prepbn", features_only=True, out_indices=[1, 3], **kw)
    assert net.out_channels == [kw["embed_dims"][1], kw["embed_dims"][3]]
    assert net.feature_info == [dict(chs=kw["embed_dims"][1], reduction=8, name="block2"),
                                dict(chs=kw["embed_dims"][3], reduction=32, name="block4")]
    # the wrapper keeps the model's parameter names: classification checkpoints load unchanged
    plain = slab_ms.create_model("pvt_tiny_prepbn", **kw)
    assert [n for n, _ in net.parameters_and_names()] == [n for n, _ in plain.parameters_and_names()]
    outs = net(ms.Tensor(np.zeros((1, 3, 224, 224), np.float32)))
    assert [o.shape for o in outs] == [(1, kw["embed_dims"][1], 28, 28), (1, kw["embed_dims"][3], 7, 7)]


def test_features_only_errors():
    with pytest.raises(ConfigError, match="no stages"):
        slab_ms.create_model("deit_tiny_prepbn", features_only=True)
    with pytest.raises(ConfigError, match="needs features_only"):
        slab_ms.create_model("slab_swin_tiny", out_indices=(0, 1))
    with pytest.raises(ConfigError, match="out_indices"):
        slab_ms.create_model("slab_cswin_tiny", **SMALL_VARIANTS["slab_cswin_tiny"], features_only=True,
                             out_indices=(2, 4))

"""Public API: create_model with overrides, list_models, mindcv registration, strict load_checkpoint."""
import os

import numpy as np
import pytest
import mindspore as ms

import slab_ms
from conftest import SWIN_MINI

def test_list_models_has_every_upstream_model(reference_dir):
    """The 14 models of shared/reference/checkpoints and the two upstream configures without
    publishing weights (tests/layouts: slab_pvt_small, slab_pvt_medium)."""
    names = {f[:-5] for f in os.listdir(os.path.join(reference_dir, "checkpoints"))
             if f.endswith(".json") and not f.endswith("_mini.json")}
    extra = {f[:-5] for f in os.listdir(os.path.join(os.path.dirname(__file__), "layouts")) if f.endswith(".json")}
    assert len(names) == 14 and extra == {"slab_pvt_small", "slab_pvt_medium"}
    assert set(slab_ms.list_models()) == names | extra


def test_create_model_overrides_sizes():
    net = slab_ms.create_model("slab_swin_tiny", embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
                               img_size=224, num_classes=5, window_size=56, attn_type="LSSS", drop_path_rate=0.1)
    params = dict(net.parameters_and_names())
    assert params["head.weight"].shape == (5, 128)
    assert params["layers.0.blocks.0.attn.positional_encoding"].shape == (1, 56 * 56, 16)  # clipped: global
    assert "layers.1.blocks.0.attn.relative_position_bias_table" in params
    assert int(params["norm.total_step"].asnumpy()) == 60000
    out = net(ms.Tensor(np.zeros((1, 3, 224, 224), np.float32)))
    assert out.shape == (1, 5)
    with pytest.raises(ValueError, match="not divisible by window size 7"):
        slab_ms.create_model("slab_swin_tiny", img_size=128)


def test_create_model_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match="unknown model 'swin_huge'"):
        slab_ms.create_model("swin_huge")
    with pytest.raises(ValueError, match="bad arguments"):
        slab_ms.create_model("slab_swin_tiny", embed_dims=3)
    with pytest.raises(ValueError, match="one entry per stage"):
        slab_ms.create_model("slab_swin_tiny", attn_type="LLS")


def test_mindcv_create_model_finds_slab_models():
    import mindcv
    net = mindcv.create_model("swin_tiny_prepbn", num_classes=10, embed_dim=16, depths=[2, 2, 2, 2],
                              num_heads=[1, 2, 4, 8])
    assert dict(net.parameters_and_names())["head.weight"].shape == (10, 128)


def test_load_checkpoint_is_strict_and_names_every_problem(tmp_path):
    net = slab_ms.create_model("swin_tiny_prepbn", **SWIN_MINI)
    params = {k: p.asnumpy() for k, p in net.parameters_and_names()}
    params["head.weight"] = np.ones((3, 128), np.float32)
    del params["norm.alpha"]
    params["bogus"] = np.zeros(1, np.float32)
    slab_ms.save_ms_checkpoint(params, str(tmp_path / "x.ckpt"))
    before = net.head.bias.asnumpy().copy()
    with pytest.raises(slab_ms.CheckpointError) as err:
        slab_ms.load_checkpoint(net, str(tmp_path / "x.ckpt"))
    msg = str(err.value)
    assert "1 missing: norm.alpha" in msg and "1 unexpected: bogus" in msg
    assert "head.weight [3, 128] vs model [10, 128]" in msg
    np.testing.assert_array_equal(net.head.bias.asnumpy(), before)  # nothing was loaded


def test_load_checkpoint_round_trips_counters(tmp_path):
    net = slab_ms.create_model("slab_swin_tiny", **SWIN_MINI)
    net.patch_embed.norm.set_schedule(100)
    net.patch_embed.norm.iter.set_data(ms.Tensor(37, ms.int64))
    slab_ms.save_ms_checkpoint({k: p.asnumpy() for k, p in net.parameters_and_names()}, str(tmp_path / "c.ckpt"))
    other = slab_ms.create_model("slab_swin_tiny", **SWIN_MINI)
    slab_ms.load_checkpoint(other, str(tmp_path / "c.ckpt"))
    assert int(other.patch_embed.norm.iter.asnumpy()) == 37
    assert int(other.patch_embed.norm.total_step.asnumpy()) == 100

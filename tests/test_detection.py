"""SLAB detection backbones (models/swin_det.py, convert/detection.py) against upstream's own
outputs and layouts (shared/reference/detection, made by running upstream's mmdet_custom code).

Everything that runs uses the two seeded minis; full-size backbones are only built.
"""
import json
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
import mindspore as ms

import slab_ms
from conftest import GOLDEN_MINIS
from slab_ms.convert.detection import (classification_to_detection, detection_mindspore_to_torch,
                                       detection_torch_to_mindspore, infer_detection_config,
                                       load_classification_weights)
from slab_ms.convert.mapping import ms_to_torch
from slab_ms.errors import CheckpointError
from slab_ms.models.swin_det import DETECTION_DEFAULTS, DetectionPRepBN, export_dynamic_hw

DET_MINI = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], drop_path_rate=0.0)
# reference mini -> (registered backbone, upstream layout file of the full size)
MINIS = {"slab_swin_det_mini": "slab_swin_tiny_det", "swin_prepbn_det_mini": "swin_tiny_prepbn_det"}
LAYOUTS = {"slab_swin_tiny_det": "slab_swin_tiny", "slab_swin_small_det": "slab_swin_small",
           "swin_tiny_prepbn_det": "swin_tiny_prepbn", "swin_small_prepbn_det": "swin_small_prepbn"}
TOL = 1e-5   # shared/reference/detection/README.md: a float32 port matches to ~1e-6, 1e-5 the limit


def det_dir(reference_dir):
    return os.path.join(reference_dir, "detection")


def rel(got, ref):
    """max |got - ref| / max |ref| (the README's measure)."""
    return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def converted(reference_dir, tmp_path_factory):
    """Each mini's mmdet-style .pth converted by convert.py's code path -> {mini: .ckpt path}."""
    out = {}
    for mini in MINIS:
        path = str(tmp_path_factory.mktemp("det") / f"{mini}.ckpt")
        r = detection_torch_to_mindspore(os.path.join(det_dir(reference_dir), mini + ".pth"), path)
        assert r.name == MINIS[mini] and r.skipped == {}   # inferred from the keys alone
        out[mini] = (path, r.overrides)
    return out


def load_mini(mini, converted):
    path, overrides = converted[mini]
    net = slab_ms.create_model(MINIS[mini], **dict(overrides, drop_path_rate=0.0))   # the minis' kwargs
    slab_ms.load_checkpoint(net, path)
    return net


def counters(net, suffix):
    return {k: int(p.asnumpy()) for k, p in net.parameters_and_names() if k.endswith(suffix)}


# ------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_full_size_layout_equals_upstream(name, reference_dir):
    """The four backbones as upstream's Mask R-CNN configs build them: state dict keys, shapes,
    dtypes and order, parameter count, output channels, per-block attention/window/shift."""
    with open(os.path.join(det_dir(reference_dir), f"layout_{LAYOUTS[name]}.json")) as f:
        ref = json.load(f)
    net = slab_ms.create_model(name)
    sd = ms_to_torch(net, {k: p.asnumpy() for k, p in net.parameters_and_names()})
    assert [[k, list(v.shape), str(v.dtype)] for k, v in sd.items()] == ref["state_dict"]
    assert ["backbone." + k for k in sd] == ref["mmdet_checkpoint_keys"]
    assert sum(int(np.prod(p.shape)) for p in net.trainable_params()) == ref["num_parameters"]
    assert net.out_channels == ref["out_channels"] and list(net.out_indices) == ref["out_indices"]
    blocks = [[i, j, "SLA" if blk.attn_type == "L" else "softmax", blk.window_size, blk.shift_size]
              for i, layer in enumerate(net.layers) for j, blk in enumerate(layer.blocks)]
    assert blocks == ref["blocks_stage_block_attn_window_shift"]
    assert net.reductions == [4, 8, 16, 32]
    # the layout alone is recognised as this backbone with its registered defaults
    assert infer_detection_config({k: tuple(s) for k, s, _ in ref["state_dict"]}) == (name, {})
    # upstream's config kwargs are the registered defaults, under upstream's argument names
    defaults = DETECTION_DEFAULTS[name]
    assert {k: defaults[k] for k in ref["backbone_kwargs"]} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in ref["backbone_kwargs"].items()}


def test_detection_backbones_are_registered_apart_from_classifiers():
    assert slab_ms.list_models("detection") == sorted(LAYOUTS)
    assert not set(slab_ms.list_models()) & set(LAYOUTS)
    import mindcv
    net = mindcv.create_model("swin_tiny_prepbn_det", **DET_MINI, out_indices=[1, 3])   # num_classes ignored
    assert net.out_channels == [32, 128] and [n for n, _ in net.parameters_and_names() if n.startswith("norm")] == \
        ["norm1.gamma", "norm1.beta", "norm3.gamma", "norm3.beta"]
    with pytest.raises(ValueError, match="not downloaded"):
        slab_ms.create_model("slab_swin_tiny_det", pretrained=True)


# ------------------------------------------------------------------------------------ converter
@pytest.mark.parametrize("mini", sorted(MINIS))
def test_mmdet_checkpoint_round_trip_is_bit_exact(mini, reference_dir, converted, tmp_path):
    """mmdet .pth -> .ckpt -> .pth: same keys in the same order, dtypes and values; upstream's
    format ({"state_dict": {"backbone.<key>": ...}}, torch.load weights_only)."""
    src = os.path.join(det_dir(reference_dir), mini + ".pth")
    back = tmp_path / "back.pth"
    r = detection_mindspore_to_torch(converted[mini][0], str(back))
    assert r.name == MINIS[mini]
    original = torch.load(src, weights_only=True)["state_dict"]
    result = torch.load(back, weights_only=True)
    assert list(result) == ["state_dict"]
    result = result["state_dict"]
    assert list(result) == list(original) and all(k.startswith("backbone.") for k in result)
    for k in original:
        assert result[k].dtype == original[k].dtype, k
        assert torch.equal(result[k], original[k]), k


def _detector_checkpoint(reference_dir, path):
    """The mini as a whole detector: its backbone plus neck and head tensors, and an optimizer."""
    sd = torch.load(os.path.join(det_dir(reference_dir), "slab_swin_det_mini.pth"), weights_only=True)["state_dict"]
    n_params = sum(not k.endswith("relative_position_index") for k in sd)   # that index is computed
    extra = OrderedDict([("neck.lateral_convs.0.conv.weight", torch.zeros(4, 16, 1, 1)),
                         ("neck.lateral_convs.0.conv.bias", torch.zeros(4)),
                         ("rpn_head.rpn_conv.weight", torch.zeros(4, 4, 3, 3)),
                         ("roi_head.bbox_head.fc_cls.weight", torch.zeros(81, 8)),
                         ("roi_head.bbox_head.fc_cls.bias", torch.zeros(81))])
    torch.save({"meta": {"epoch": 12}, "state_dict": OrderedDict(list(sd.items()) + list(extra.items())),
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return n_params, len(sd)


def test_cli_detector_checkpoint_needs_backbone_only(reference_dir, tmp_path, capsys):
    """convert.py recognises an mmdet detector; its neck/head keys are refused with one line
    (nothing written) unless --backbone-only, which skips and counts them."""
    from slab_ms.cli.convert import main
    src, out = str(tmp_path / "detector.pth"), tmp_path / "backbone.ckpt"
    n, n_keys = _detector_checkpoint(reference_dir, src)
    assert main(["--from", "torch", "--input", src, "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "5 keys outside the backbone (neck 2, roi_head 2, rpn_head 1)" in err
    assert "--backbone-only" in err and not out.exists() and os.listdir(tmp_path) == ["detector.pth"]
    assert main(["--from", "torch", "--input", src, "--output", str(out), "--backbone-only"]) == 0
    printed = capsys.readouterr().out
    assert f"converted {n} tensors of slab_swin_tiny_det" in printed
    assert "skipped 5 keys outside the backbone (neck 2, roi_head 2, rpn_head 1)" in printed
    back = tmp_path / "back.pth"
    assert main(["--from", "mindspore", "--input", str(out), "--output", str(back)]) == 0
    assert len(torch.load(back, weights_only=True)["state_dict"]) == n_keys


def test_bad_detection_checkpoint_fails_with_one_line_and_writes_nothing(reference_dir, tmp_path):
    sd = torch.load(os.path.join(det_dir(reference_dir), "swin_prepbn_det_mini.pth"), weights_only=True)
    del sd["state_dict"]["backbone.layers.1.blocks.0.mlp.fc1.bias"]
    sd["state_dict"]["backbone.layers.0.blocks.0.attn.relative_position_index"][0, 0] = 7
    torch.save(sd, tmp_path / "bad.pth")
    out = tmp_path / "bad.ckpt"
    with pytest.raises(CheckpointError) as e:
        detection_torch_to_mindspore(str(tmp_path / "bad.pth"), str(out), model="swin_tiny_prepbn_det",
                                     overrides=DET_MINI)
    msg = str(e.value)
    assert "\n" not in msg and "1 missing keys: layers.1.blocks.0.mlp.fc1.bias" in msg
    assert "layers.0.blocks.0.attn.relative_position_index" in msg and not out.exists()


# ------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("mini", sorted(MINIS))
def test_eval_outputs_match_upstream_at_three_sizes(mini, reference_dir, converted):
    """224x224, 100x130 and 234x68 (odd maps: padding in every stage) in one process: MindSpore
    compiles one graph per size, and a size seen before reuses its graph."""
    ref = np.load(os.path.join(det_dir(reference_dir), mini + ".npz"))
    net = load_mini(mini, converted)
    net.set_train(False)
    first = None
    for h, w in ref["sizes"]:
        outs = net(ms.Tensor(ref[f"input_{h}x{w}"]))
        assert len(outs) == 4
        for i, o in enumerate(outs):
            expected = ref[f"out{i}_eval_{h}x{w}"]
            assert o.shape == expected.shape
            assert rel(o.asnumpy(), expected) < TOL, (h, w, i, rel(o.asnumpy(), expected))
        first = first or (f"input_{h}x{w}", [o.asnumpy() for o in outs])
    again = net(ms.Tensor(ref[first[0]]))
    assert all(np.array_equal(a.asnumpy(), b) for a, b in zip(again, first[1]))
    assert set(counters(net, ".iter").values()) == {90000}   # eval moves no counter


@pytest.mark.parametrize("mini", sorted(MINIS))
def test_training_forward_matches_upstream(mini, reference_dir, converted):
    """One training forward: 0.3 LN + 0.7 RepBN with running statistics; every iter steps once
    (lam read before), total_step unchanged, BN statistics untouched (upstream keeps BN in eval)."""
    ref = np.load(os.path.join(det_dir(reference_dir), mini + ".npz"))
    net = load_mini(mini, converted)
    bn_before = {k: p.asnumpy().copy() for k, p in net.parameters_and_names()
                 if k.endswith(("moving_mean", "moving_variance", "num_batches_tracked"))}
    names = [str(n)[len("backbone."):] for n in ref["counter_names"]]
    assert [counters(net, ".iter")[k] for k in names] == list(ref["counters_before_train_forward"])
    net.set_train(True)
    h, w = ref["train_size"]
    outs = net(ms.Tensor(ref[f"input_{h}x{w}"]))
    for i, o in enumerate(outs):
        assert rel(o.asnumpy(), ref[f"out{i}_train_{h}x{w}"]) < TOL, i
    its = counters(net, ".iter")
    assert sorted(its) == sorted(names)
    assert [its[k] for k in names] == list(ref["counters_after_train_forward"])
    assert [counters(net, ".total_step")[k.replace(".iter", ".total_step")] for k in names] == list(ref["total_step"])
    assert not bool(ref["bn_stats_changed_by_train_forward"])
    for k, v in bn_before.items():
        assert np.array_equal(dict(net.parameters_and_names())[k].asnumpy(), v), k


def test_frozen_stages_and_frozen_batchnorm():
    """frozen_stages=2 (upstream: patch embedding and layers[0]) stays in eval mode and without
    gradients through set_train(True) of the backbone or of a parent cell."""
    net = slab_ms.create_model("swin_tiny_prepbn_det", **DET_MINI, frozen_stages=2)
    parent = ms.nn.SequentialCell([net])
    parent.set_train(True)
    assert not net.patch_embed.training and not net.layers[0].blocks[1].norm1.training
    assert net.layers[1].training and net.layers[1].blocks[0].norm1.training
    frozen = {n for n, p in net.parameters_and_names() if p.requires_grad is False and "." in n
              and not n.endswith(("iter", "total_step", "moving_mean", "moving_variance", "num_batches_tracked"))}
    assert frozen and all(n.startswith(("patch_embed.", "layers.0.")) for n in frozen)
    assert {"layers.0.downsample.reduction.weight", "patch_embed.proj.weight"} <= frozen
    assert dict(net.parameters_and_names())["layers.1.blocks.0.attn.qkv.weight"].requires_grad
    with pytest.raises(ValueError, match="warm-up"):
        net.layers[1].blocks[0].norm1.set_schedule(1000, warm=10)


# ------------------------------------------------------------------------------------ fold
def test_reparameterized_backbone_equals_unfused_at_three_sizes(reference_dir, converted):
    """Patch-embed norm, norm2 -> fc1 and merge norms fold exactly; norm1 stays one affine (the
    window padding after it makes that fold inexact at 100x130 and 234x68). Checked against
    upstream's unfused outputs, which the unfused backbone matches to ~1e-6. The SLAB mini has
    both block kinds (SLA and softmax); the fold code is the same for the PRepBN backbone."""
    mini = "slab_swin_det_mini"
    ref = np.load(os.path.join(det_dir(reference_dir), mini + ".npz"))
    net = slab_ms.reparameterize(load_mini(mini, converted))
    assert sorted(slab_ms.remaining_norms(net)) == ["norm0", "norm1", "norm2", "norm3"]   # output LayerNorms
    assert not any(isinstance(c, DetectionPRepBN) for _, c in net.cells_and_names())
    affines = [n for n, c in net.cells_and_names() if type(c).__name__ == "ChannelAffine"]
    assert len(affines) == 8 and all(n.endswith(".norm1") for n in affines)
    for h, w in ref["sizes"]:
        for i, o in enumerate(net(ms.Tensor(ref[f"input_{h}x{w}"]))):
            assert rel(o.asnumpy(), ref[f"out{i}_eval_{h}x{w}"]) < TOL, (h, w, i)


# ------------------------------------------------------------------------------------ classification -> detection
def _classification_state_dict(name):
    """A full-size classification model's state dict as upstream saves it (buffers included)."""
    net = slab_ms.create_model(name)
    return ms_to_torch(net, {k: p.asnumpy() for k, p in net.parameters_and_names()})


def _upstream_report(reference_dir, model):
    with open(os.path.join(det_dir(reference_dir), "load_from_classification.json")) as f:
        return next(r for r in json.load(f) if r["classification_model"] == model)


def test_slab_swin_tiny_classification_load_equals_upstreams(reference_dir):
    """409 of 417 keys load; head, final norm, warm counters and attn_mask dropped (44);
    norm0-3 missing (8); the counters come from the checkpoint (60000), as upstream's loader."""
    up = _upstream_report(reference_dir, "slab_swin_tiny")
    src = _classification_state_dict("slab_swin_tiny")
    assert len(src) == up["classification_keys"]
    net = slab_ms.create_model("slab_swin_tiny_det")
    rep = load_classification_weights(net, src, "slab_swin_tiny")
    assert len(rep.loaded) == up["loaded"] == 409 and not rep.mapped and not rep.set and not rep.size_mismatch
    assert sorted(rep.unexpected_keys()) == sorted(up["unexpected"])
    assert sorted(rep.missing_keys()) == sorted(up["missing"])
    assert {k: len(v) for k, v in rep.unexpected.items()} == {
        "classifier head": 2, "classification final norm": 11,
        "warm-up counters (the detection PRepBN has none)": 28, "attn_mask buffers (computed per forward)": 3}
    assert list(rep.missing) == ["detection output norms norm0-3 (new)"]
    assert set(counters(net, ".iter").values()) == set(up["counters_after_load"]) == {60000}
    assert set(counters(net, ".total_step").values()) == {60000}
    params = dict(net.parameters_and_names())
    for k in ("layers.0.blocks.1.attn.positional_encoding", "layers.2.blocks.3.norm1.norm2.bn.running_var"):
        assert np.array_equal(params[k.replace("running_var", "moving_variance")].asnumpy(), src[k]), k


def test_swin_tiny_prepbn_classification_load_maps_repbn(reference_dir):
    """Upstream loads 125 keys and none of the 28 norms (plain RepBN keys vs LinearNorm keys).
    Here the same 125 load, each RepBN (168 keys) goes into its PRepBN's BN branch, and the
    schedule is set finished (iter 0); the LayerNorm branches (56) and norm0-3 (8) stay new."""
    up = _upstream_report(reference_dir, "swin_tiny_prepbn")
    src = _classification_state_dict("swin_tiny_prepbn")
    assert len(src) == up["classification_keys"]
    net = slab_ms.create_model("swin_tiny_prepbn_det")
    rep = load_classification_weights(net, src, "swin_tiny_prepbn")
    repbn_keys = [k for k in up["unexpected"] if (k.endswith(".alpha") or ".bn." in k) and not k.startswith("norm.")]
    assert len(repbn_keys) == 168
    assert len(rep.loaded) == up["loaded"] == 125
    assert sorted(rep.mapped.values()) == sorted(repbn_keys)
    assert all(d == s.replace(".alpha", ".norm2.alpha").replace(".bn.", ".norm2.bn.") for d, s in rep.mapped.items())
    assert sorted(rep.unexpected_keys()) == sorted(set(up["unexpected"]) - set(repbn_keys))
    assert {k: len(v) for k, v in rep.unexpected.items()} == {
        "classifier head": 2, "classification final norm": 6, "attn_mask buffers (computed per forward)": 5}
    assert {k: len(v) for k, v in rep.missing.items()} == {
        "detection output norms norm0-3 (new)": 8,
        "LayerNorm branch of PRepBNs loaded from RepBN (unused at lam 0)": 56}
    assert len(rep.set) == 56 and {v for k, v in rep.set.items() if k.endswith(".iter")} == {0}
    assert set(counters(net, ".iter").values()) == {0}
    assert any("BatchNorm branch" in n and "lam 0" in n for n in rep.notes)
    # upstream's missing keys = ours + the mapped BN branches + the counters we set
    # (mmcv's list leaves out num_batches_tracked)
    ours = set(rep.missing_keys()) | set(rep.mapped) | set(rep.set)
    assert {k for k in ours if not k.endswith("num_batches_tracked")} == set(up["missing"])


def test_prepbn_backbone_from_classification_equals_classification_stages(reference_dir, tmp_path, capsys):
    """The golden Swin-PRepBN classification mini -> detection backbone (convert.py --from
    classification): each output equals LayerNorm(classification stage output), norm0-3 being
    new (weight 1, bias 0); every detection PRepBN at lam 0, so a training forward computes
    the same (RepBN with frozen statistics, test_training_forward_matches_upstream).

    At 448x448, where every stage map is a multiple of the window and larger than it: at 224 the
    last stage is 7x7 and the classification Swin (upstream too) does not shift a window that
    covers the map, while the detection Swin (mmdet's) shifts it with the -100 mask."""
    from slab_ms.cli.convert import main
    pth = os.path.join(reference_dir, "golden", "swin_prepbn_mini.pth")
    out = tmp_path / "det.ckpt"
    assert main(["--from", "classification", "--input", pth, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote swin_tiny_prepbn_det" in printed and "BatchNorm branch" in printed
    assert "120 keys mapped (RepBN -> PRepBN BN branch), 40 counters set" in printed   # 20 norms
    det = slab_ms.create_model("swin_tiny_prepbn_det", **DET_MINI)
    slab_ms.load_checkpoint(det, str(out))
    model, overrides = GOLDEN_MINIS["swin_prepbn_mini"]
    cls = slab_ms.create_model(model, **dict(overrides, img_size=448), features_only=True)
    from slab_ms.convert.api import torch_to_mindspore
    torch_to_mindspore(pth, str(tmp_path / "cls.ckpt"))
    slab_ms.load_checkpoint(cls, str(tmp_path / "cls.ckpt"))
    cls.set_train(False)
    x = np.random.default_rng(0).uniform(-4, 4, (1, 3, 448, 448)).astype(np.float32)
    stages = [s.asnumpy() for s in cls(ms.Tensor(x))]
    mean = [s.mean(axis=1, keepdims=True) for s in stages]
    expected = [(s - m) / np.sqrt(((s - m) ** 2).mean(axis=1, keepdims=True) + 1e-5) for s, m in zip(stages, mean)]
    det.set_train(False)
    for i, o in enumerate(det(ms.Tensor(x))):
        assert o.shape == (1, 16 * 2 ** i, 112 // 2 ** i, 112 // 2 ** i)
        assert rel(o.asnumpy(), expected[i]) < TOL, i
    prepbns = [c for _, c in det.cells_and_names() if isinstance(c, DetectionPRepBN)]
    assert len(prepbns) == 20 and {c.lam() for c in prepbns} == {0.0}


def test_classification_to_detection_refuses_what_does_not_fit(reference_dir, tmp_path):
    out = tmp_path / "det.ckpt"
    with pytest.raises(CheckpointError, match="no key fits"):
        classification_to_detection(os.path.join(reference_dir, "golden", "pvt_prepbn_mini.pth"), str(out),
                                    model="slab_swin_tiny_det", overrides=DET_MINI)
    assert not out.exists()


# ------------------------------------------------------------------------------------ export
def test_mindir_export_dynamic_hw(reference_dir, converted, tmp_path):
    """One MindIR with unknown batch, height and width (export_dynamic_hw) runs upstream's inputs
    at 100x130 and 234x68 through a GraphCell and matches upstream's outputs."""
    ref = np.load(os.path.join(det_dir(reference_dir), "slab_swin_det_mini.npz"))
    net = load_mini("slab_swin_det_mini", converted)
    path = export_dynamic_hw(net, str(tmp_path / "slab_det"))
    assert all(not c.dynamic_hw for _, c in net.cells_and_names() if hasattr(c, "dynamic_hw"))
    graph = ms.nn.GraphCell(ms.load(path))
    for h, w in ((100, 130), (234, 68)):
        x = ref[f"input_{h}x{w}"][: 1 if h == 100 else 2]
        outs = graph(ms.Tensor(x))
        for i, o in enumerate(outs):
            expected = ref[f"out{i}_eval_{h}x{w}"][: x.shape[0]]
            assert o.shape == expected.shape and rel(o.asnumpy(), expected) < TOL, (h, w, i)

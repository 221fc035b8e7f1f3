"""The SLAB authors' own MindSpore port (mindspore-lab/models, research/huawei-noah/SLAB: Swin-T with
RepBN) and its checkpoint layout: computed buffers stored (``relative_position_index``, ``attn_mask``
(1, nW, 1, N, N)), no ``num_batches_tracked``. shared/reference/official_ms holds a mini checkpoint
saved by the port's own code and the port's eval logits.

The port's MLP uses MindSpore's default ``nn.GELU()``, the tanh approximation; upstream's PyTorch
model and this package use the exact (erf) GELU. Built with ``gelu="tanh"`` (``model_kwargs``), the
model gives the port's logits within 1e-5; by default it computes upstream's function, which the
converted ``.pth`` in the PyTorch reference confirms.
"""
import json
import os

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn

import slab_ms
from conftest import SWIN_MINI, randomize_ms, rel_err
from slab_ms.checkpoint import load_pretrained, model_params, read_ms_checkpoint, save_ms_checkpoint
from slab_ms.convert import torch_ref
from slab_ms.convert.api import mindspore_to_torch
from slab_ms.cli.convert import main as convert_main
from slab_ms.convert.route import route_mindspore
from slab_ms.errors import CheckpointError
from slab_ms.layers.common import Mlp

MINI = "official_swin_tiny_prepbn_mini"
TOL = 1e-5


@pytest.fixture(scope="module")
def port(reference_dir):
    """(path of the port's mini checkpoint, its {name: array}, its golden npz)."""
    d = os.path.join(reference_dir, "official_ms")
    path = os.path.join(d, MINI + ".ckpt")
    return path, read_ms_checkpoint(path), np.load(os.path.join(d, MINI + "_golden.npz"))


def mini(**kw):
    return slab_ms.create_model("swin_tiny_prepbn", **dict(SWIN_MINI, **kw))


def params_of(net):
    return {k: p.asnumpy() for k, p in net.parameters_and_names()}


def port_layout(params, port_params):
    """``params`` (this package's swin_tiny_prepbn, any depths) saved the way the port saves them, by
    the rules its mini checkpoint shows: BN tensors without ``num_batches_tracked`` and
    ``moving_mean``/``moving_variance`` first, ``attn.relative_position_index`` before the bias table,
    ``attn_mask`` (1, nW, 1, N, N) first in every shifted block. Swin-T's resolutions at 224 (56-28-14-7)
    and window (7) are the mini's, so the buffers come from the port's own file: the first block's index
    and each stage's mask."""
    index = port_params["layers.0.blocks.0.attn.relative_position_index"]
    masks = {k.split(".")[1]: v for k, v in port_params.items() if k.endswith("attn_mask")}
    out = {}
    for k, v in params.items():
        head, _, last = k.rpartition(".")
        if last == "num_batches_tracked" or last in ("gamma", "beta") and head.endswith(".bn"):
            continue
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] == "blocks" and parts[4] == "norm1" and k.endswith("norm1.alpha"):
            block = ".".join(parts[:4])
            if int(parts[3]) % 2 == 1 and parts[1] in masks:
                out[block + ".attn_mask"] = masks[parts[1]]
        if last == "relative_position_bias_table":
            out[head + ".relative_position_index"] = index
        out[k] = v
        if last == "moving_variance":
            out[head + ".gamma"] = params[head + ".gamma"]
            out[head + ".beta"] = params[head + ".beta"]
    return out


def test_port_layout_rules_reproduce_the_ports_file(port):
    """The test's port_layout applied to this package's mini gives the port's file exactly: every
    name, shape and dtype, in order (so the full-size file below is written as the port writes one)."""
    _, port_params, _ = port
    ours = port_layout(params_of(mini()), port_params)
    assert [(k, v.shape, v.dtype) for k, v in ours.items()] == \
        [(k, v.shape, v.dtype) for k, v in port_params.items()]


def test_load_checkpoint_gives_the_ports_logits(port):
    """slab_ms.load_checkpoint (validate.py, export) takes the port's file; built with the port's GELU
    (gelu="tanh": MindSpore's nn.GELU() in every MLP) the eval logits equal the port's within 1e-5
    (measured 4.3e-7), every BN's num_batches_tracked is filled with 0 (int64), and the port's
    buffers equal what the model computes."""
    path, port_params, golden = port
    net = mini(gelu="tanh")
    acts = [c.act for _, c in net.cells_and_names() if isinstance(c, Mlp)]
    assert len(acts) == 8 and all(isinstance(a, nn.GELU) for a in acts)
    slab_ms.load_checkpoint(net, path)
    loaded = params_of(net)
    tracked = [k for k in loaded if k.endswith("num_batches_tracked")]
    assert len(tracked) == 21 and all(loaded[k].dtype == np.int64 and loaded[k] == 0 for k in tracked)
    for k, v in port_params.items():
        if not k.endswith(("relative_position_index", "attn_mask")):
            assert np.array_equal(loaded[k], v), k
    net.set_train(False)
    err = rel_err(net(ms.Tensor(golden["x"])).asnumpy(), golden["logits_eval"])
    assert err <= TOL, err


def test_the_gelu_option_names_its_choices(tmp_path):
    """Another value is one line naming the choices: from create_model, and from validate.py's
    model_kwargs (exit 2)."""
    from slab_ms.errors import ConfigError
    with pytest.raises(ConfigError, match=r"^bad arguments for swin_tiny_prepbn: gelu must be one of exact, tanh, "
                                          r"got 'erf'$"):
        mini(gelu="erf")


def test_convert_to_torch_loads_strictly_and_gives_the_same_logits(port, tmp_path, capsys):
    """convert.py --from mindspore (its main, architecture inferred) writes upstream's layout; the PyTorch
    reference loads it with strict=True and gives our model's logits (both exact GELU) within 1e-5,
    and the port's logits with the port's (tanh) GELU. num_batches_tracked is what torch's own
    BatchNorm loader fills into a fresh model for a file saved without it."""
    path, _, golden = port
    out = tmp_path / "port.pth"
    assert convert_main(["--from", "mindspore", "--input", path, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "216 tensors of swin_tiny_prepbn (embed_dim=16 depths=[2, 2, 2, 2] num_heads=[1, 2, 4, 8] num_classes=10)" \
        in printed, printed
    sd = torch.load(out, weights_only=True)["model"]
    ref = torch_ref.create_model("swin_tiny_prepbn", **SWIN_MINI).eval()
    ref.load_state_dict(sd, strict=True)
    legacy = torch_ref.create_model("swin_tiny_prepbn", **SWIN_MINI)
    legacy.load_state_dict({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, strict=True)
    filled = {k: v for k, v in legacy.state_dict().items() if k.endswith("num_batches_tracked")}
    assert filled and all(torch.equal(sd[k], v) and sd[k].dtype == torch.int64 for k, v in filled.items())

    net = mini()
    slab_ms.load_checkpoint(net, path)
    net.set_train(False)
    x = golden["x"]
    ours = net(ms.Tensor(x)).asnumpy()
    with torch.no_grad():
        exact = ref(torch.from_numpy(x)).numpy()
        for m in ref.modules():
            if isinstance(m, torch.nn.GELU):
                m.approximate = "tanh"
        port_gelu = ref(torch.from_numpy(x)).numpy()
    assert rel_err(ours, exact) <= TOL, rel_err(ours, exact)
    assert rel_err(port_gelu, golden["logits_eval"]) <= TOL, rel_err(port_gelu, golden["logits_eval"])
    # the GELUs differ by this much on these weights: what the port's users see change
    assert 1e-5 < rel_err(ours, golden["logits_eval"]) < 1e-3
    assert (ours.argmax(1) == golden["logits_eval"].argmax(1)).all()


def test_fine_tuning_from_the_port(port):
    """train.py's ckpt_path: load_pretrained (what the trainer calls) takes the port's file into a
    model of another num_classes, re-initialising only the classifier."""
    path, port_params, _ = port
    net = mini(num_classes=4)
    reinit = load_pretrained(net, model_params(read_ms_checkpoint(path)), what=path)
    assert reinit == ["head.weight", "head.bias"]
    loaded = params_of(net)
    assert np.array_equal(loaded["layers.2.blocks.1.attn.qkv.weight"], port_params["layers.2.blocks.1.attn.qkv.weight"])
    assert all(loaded[k] == 0 for k in loaded if k.endswith("num_batches_tracked"))


def test_route_recognises_the_layout(port):
    path, _, _ = port
    assert route_mindspore(path).layout == "official_ms"
    assert route_mindspore(path, model="swin_tiny_prepbn").layout == "official_ms"


def _damaged(tmp_path, port_params, mutate):
    params = dict(port_params)
    mutate(params)
    path = str(tmp_path / "bad.ckpt")
    save_ms_checkpoint(params, path)
    return path


def _set(key, value):
    def mutate(params):
        params[key] = value(params[key])
    return mutate


def _pop(key):
    return lambda params: params.pop(key)


@pytest.mark.parametrize("mutate,expected", [
    (_set("layers.1.blocks.1.attn_mask", lambda v: v * 0),
     r"1 buffers that differ from what the model computes .*: layers\.1\.blocks\.1\.attn_mask \[1, 16, 1, 49, 49\]$"),
    (_set("layers.0.blocks.0.attn.relative_position_index", lambda v: v[::-1].copy()),
     r"1 buffers that differ .*: layers\.0\.blocks\.0\.attn\.relative_position_index \[49, 49\]$"),
    (_set("layers.0.blocks.1.attn_mask", lambda v: v.reshape(64, 49, 49)[:32]),
     r"1 buffers that differ .*: layers\.0\.blocks\.1\.attn_mask \[32, 49, 49\]$"),
    (_pop("layers.2.blocks.1.attn_mask"), r"1 computed buffers missing: layers\.2\.blocks\.1\.attn_mask$"),
    (_pop("layers.0.blocks.0.attn.qkv.weight"), r"1 missing: layers\.0\.blocks\.0\.attn\.qkv\.weight$"),
    (_set("head.weight", lambda v: v[:5]), r"1 shape-mismatched: head\.weight \[5, 128\] vs model \[10, 128\]$"),
], ids=["attn_mask", "relative_position_index", "attn_mask_shape", "missing_buffer", "missing_weight", "head"])
def test_a_mismatched_port_file_is_one_clear_error(port, tmp_path, mutate, expected):
    """Through load_checkpoint: one line naming the file, the layout and what is wrong; nothing loads."""
    _, port_params, _ = port
    path = _damaged(tmp_path, port_params, mutate)
    net = mini()
    before = params_of(net)
    with pytest.raises(CheckpointError, match=expected) as e:
        slab_ms.load_checkpoint(net, path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path} (the official MindSpore port's layout) does not fit")
    assert all(np.array_equal(v, before[k]) for k, v in params_of(net).items())


def test_convert_refuses_a_mismatched_port_file(port, tmp_path, capsys):
    """convert.py: the buffer check (exit 1, one line, nothing written) also with --model given."""
    _, port_params, _ = port
    path = _damaged(tmp_path, port_params, _set("layers.0.blocks.1.attn_mask", lambda v: -v))
    out = tmp_path / "o.pth"
    with pytest.raises(CheckpointError, match=r"port's layout, as swin_tiny_prepbn\) does not fit the model; "
                                              r"1 buffers that differ .*layers\.0\.blocks\.1\.attn_mask"):
        mindspore_to_torch(path, str(out))
    with pytest.raises(CheckpointError, match="1 buffers that differ"):
        mindspore_to_torch(path, str(out), model="swin_tiny_prepbn", overrides=dict(SWIN_MINI))
    assert convert_main(["--from", "mindspore", "--input", path, "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "attn_mask" in err, err
    assert not out.exists()


def test_another_architecture_or_a_damaged_file_is_one_clear_error(port, tmp_path):
    path, _, _ = port
    for net, expected in (
            (slab_ms.create_model("slab_swin_tiny", **SWIN_MINI), r"buffers the model does not compute: "
             r"layers\.0\.blocks\.0\.attn\.relative_position_index.*; \d+ missing: .*; \d+ unexpected: "),
            # another resolution: every parameter fits, only the buffers tell
            (mini(img_size=448), r"layout\) does not fit SwinTransformer; 1 computed buffers missing: "
             r"layers\.3\.blocks\.1\.attn_mask; 3 buffers that differ from what the model computes \(window size "
             r"or resolution differ\?\): layers\.0\.blocks\.1\.attn_mask \[1, 64, 1, 49, 49\], "
             r"layers\.1\.blocks\.1\.attn_mask \[1, 16, 1, 49, 49\], layers\.2\.blocks\.1\.attn_mask "
             r"\[1, 4, 1, 49, 49\]$")):
        with pytest.raises(CheckpointError, match=expected) as e:
            slab_ms.load_checkpoint(net, path)
        assert "\n" not in str(e.value)
    data = open(path, "rb").read()
    for name, blob in (("truncated.ckpt", data[: len(data) // 2]), ("garbage.ckpt", bytes(range(256)) * 64)):
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(CheckpointError, match="not a readable MindSpore checkpoint") as e:
            slab_ms.load_checkpoint(mini(), str(bad))
        assert "\n" not in str(e.value)
        with pytest.raises(CheckpointError, match="not a readable MindSpore checkpoint"):
            mindspore_to_torch(str(bad), str(tmp_path / "o.pth"))


def test_full_size_swin_t_in_the_ports_layout(port, reference_dir, tmp_path):
    """Swin-T at its full size (depths 2-2-6-2, 1000 classes), written as the port writes it, loads
    through load_checkpoint with every tensor in place, and converts (architecture inferred: the
    registered defaults) to exactly upstream's swin_tiny_prepbn layout."""
    _, port_params, _ = port
    net = randomize_ms(slab_ms.create_model("swin_tiny_prepbn"), seed=3)
    ours = params_of(net)
    for k in ours:
        if k.endswith("num_batches_tracked"):
            ours[k] = np.asarray(0, np.int64)
    full = port_layout(ours, port_params)
    assert sum(k.endswith("attn_mask") for k in full) == 5 and sum(k.endswith("_index") for k in full) == 12
    path = str(tmp_path / "swin_tiny_prepbn_mindspore.ckpt")
    save_ms_checkpoint(full, path)
    randomize_ms(net, seed=4)   # other values everywhere (a second full-size model costs 7 s to build)
    for k, p in net.parameters_and_names():
        if k.endswith("num_batches_tracked"):
            p.set_data(ms.Tensor(7, ms.int64))
    slab_ms.load_checkpoint(net, path)
    loaded = params_of(net)
    assert loaded.keys() == ours.keys() and all(np.array_equal(loaded[k], v) for k, v in ours.items())
    out = tmp_path / "swin_tiny_prepbn.pth"
    name, overrides, n = mindspore_to_torch(path, str(out))
    assert (name, overrides) == ("swin_tiny_prepbn", {})
    sd = torch.load(out, weights_only=True)["model"]
    with open(os.path.join(reference_dir, "checkpoints", "swin_tiny_prepbn.json")) as f:
        layout = json.load(f)["state_dict"]
    assert [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()] == layout
    assert np.array_equal(sd["layers.2.blocks.5.attn_mask"].numpy(),
                          port_params["layers.2.blocks.1.attn_mask"].reshape(4, 49, 49))

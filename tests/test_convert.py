"""Converter: bit-exact round trip, strict errors, nothing partial written, no pickled code run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import mindspore as ms

import slab_ms
from slab_ms.convert import torch_ref
from conftest import GOLDEN_MINIS, ROOT, SWIN_MINI
from slab_ms.convert.api import mindspore_to_torch, torch_to_mindspore
from slab_ms.convert.torch_io import CheckpointError, extract_state_dict, read_torch_checkpoint


def cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), *args], capture_output=True, text=True)


@pytest.mark.parametrize("golden", sorted(GOLDEN_MINIS))
def test_torch_mindspore_torch_round_trip_is_bit_exact(golden, reference_dir, tmp_path):
    src = os.path.join(reference_dir, "golden", golden + ".pth")
    ckpt, back = tmp_path / "m.ckpt", tmp_path / "back.pth"
    r1 = cli("--from", "torch", "--input", src, "--output", str(ckpt))  # architecture inferred
    assert r1.returncode == 0, r1.stderr
    r2 = cli("--from", "mindspore", "--input", str(ckpt), "--output", str(back))
    assert r2.returncode == 0, r2.stderr
    original = torch.load(src, weights_only=True)["model"]
    result = torch.load(back, weights_only=True)["model"]
    assert list(result) == list(original)  # same keys, same order
    for k in original:
        assert result[k].dtype == original[k].dtype, k
        assert torch.equal(result[k], original[k]), k
    # the PyTorch model (upstream layout) loads it strictly
    name, overrides = GOLDEN_MINIS[golden]
    torch_ref.create_model(name, **overrides).load_state_dict(result, strict=True)


def test_prepbn_counters_travel_both_ways(reference_dir, tmp_path):
    src = os.path.join(reference_dir, "golden", "slab_swin_mini.pth")
    ckpt = tmp_path / "m.ckpt"
    torch_to_mindspore(src, str(ckpt))
    params = slab_ms.read_ms_checkpoint(str(ckpt))
    counters = {k: int(v) for k, v in params.items() if k.endswith((".iter", ".total_step"))}
    assert counters and all(v == 30000 for k, v in counters.items() if k.endswith(".iter"))
    assert all(v == 60000 for k, v in counters.items() if k.endswith(".total_step"))
    assert all(params[k].dtype == np.int64 for k in counters)


@pytest.mark.parametrize("wrapper", ["bare", "model", "state_dict", "model_ema"])
def test_reads_bare_and_nested_state_dicts(wrapper, tmp_path):
    sd = torch_ref.create_model("swin_tiny_prepbn", **SWIN_MINI).state_dict()
    obj = sd if wrapper == "bare" else {wrapper: sd, "epoch": 3}
    torch.save(obj, tmp_path / "x.pth")
    loaded, key = extract_state_dict(read_torch_checkpoint(str(tmp_path / "x.pth")))
    assert key == (None if wrapper == "bare" else wrapper)
    assert list(loaded) == list(sd)
    assert all(np.array_equal(loaded[k].numpy(), sd[k].numpy()) for k in sd)


def test_key_option_selects_ema_weights(tmp_path):
    model = torch_ref.create_model("swin_tiny_prepbn", **SWIN_MINI)
    ema = {k: v + 1 if v.is_floating_point() and not k.endswith("attn_mask") else v
           for k, v in model.state_dict().items()}
    torch.save({"model": model.state_dict(), "model_ema": ema}, tmp_path / "x.pth")
    out = tmp_path / "ema.ckpt"
    r = cli("--from", "torch", "--key", "model_ema", "--input", str(tmp_path / "x.pth"), "--output", str(out))
    assert r.returncode == 0, r.stderr
    got = slab_ms.read_ms_checkpoint(str(out))["head.weight"]
    np.testing.assert_array_equal(got, ema["head.weight"].numpy())


def _mini_checkpoint(tmp_path, mutate):
    sd = torch_ref.create_model("slab_swin_tiny", **SWIN_MINI).state_dict()
    mutate(sd)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    return path


@pytest.mark.parametrize("mutate,expected", [
    (lambda sd: sd.pop("head.bias"), "1 missing keys: head.bias"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(3)), "1 unexpected keys: extra.weight"),
    (lambda sd: sd.__setitem__("head.weight", torch.zeros(11, 128)), "head.weight [11, 128] vs model [10, 128]"),
    (lambda sd: sd.__setitem__("layers.0.blocks.1.attn_mask", sd["layers.0.blocks.1.attn_mask"] * 0)
     if "layers.0.blocks.1.attn_mask" in sd else sd.__setitem__(
         "layers.2.blocks.1.attn_mask", sd["layers.2.blocks.1.attn_mask"] * 0), "differ from what the model computes"),
])
def test_strict_errors_name_the_problem_and_write_nothing(mutate, expected, tmp_path):
    src = _mini_checkpoint(tmp_path, mutate)
    out = tmp_path / "out.ckpt"
    args = ["--from", "torch", "--model", "slab_swin_tiny", "--input", str(src), "--output", str(out)]
    args += [f"--set={k}={v}".replace(" ", "") for k, v in SWIN_MINI.items()]
    r = cli(*args)
    assert r.returncode == 1
    assert expected in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and os.listdir(tmp_path) == ["bad.pth"]


def test_wrong_architecture_is_refused(reference_dir, tmp_path):
    src = os.path.join(reference_dir, "golden", "slab_swin_mini.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        torch_to_mindspore(src, str(tmp_path / "o.ckpt"), model="swin_tiny_prepbn", overrides=SWIN_MINI)
    assert not (tmp_path / "o.ckpt").exists()


def test_existing_output_needs_force(reference_dir, tmp_path):
    src = os.path.join(reference_dir, "golden", "swin_prepbn_mini.pth")
    out = tmp_path / "o.ckpt"
    out.write_bytes(b"keep me")
    r = cli("--from", "torch", "--input", src, "--output", str(out))
    assert r.returncode == 1 and "--force" in r.stderr and out.read_bytes() == b"keep me"
    assert cli("--from", "torch", "--input", src, "--output", str(out), "--force").returncode == 0
    assert slab_ms.read_ms_checkpoint(str(out))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickled_code_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd = torch_ref.create_model("swin_tiny_prepbn", **SWIN_MINI).state_dict()
    torch.save({"model": sd, "payload": _Exploit()}, tmp_path / "evil.pth")
    name, overrides, n = torch_to_mindspore(str(tmp_path / "evil.pth"), str(tmp_path / "ok.ckpt"))
    assert not (tmp_path / "PWNED").exists()
    assert name == "swin_tiny_prepbn" and n == len(slab_ms.read_ms_checkpoint(str(tmp_path / "ok.ckpt")))


def test_mindspore_to_torch_strict(reference_dir, tmp_path):
    src = os.path.join(reference_dir, "golden", "swin_prepbn_mini.pth")
    ckpt = tmp_path / "m.ckpt"
    torch_to_mindspore(src, str(ckpt))
    params = slab_ms.read_ms_checkpoint(str(ckpt))
    params.pop("norm.alpha")
    slab_ms.save_ms_checkpoint(params, str(tmp_path / "broken.ckpt"))
    with pytest.raises(CheckpointError, match="1 missing parameters: norm.alpha"):
        mindspore_to_torch(str(tmp_path / "broken.ckpt"), str(tmp_path / "o.pth"), model="swin_tiny_prepbn",
                           overrides=SWIN_MINI)
    assert not (tmp_path / "o.pth").exists()


@pytest.mark.parametrize("name", slab_ms.list_models())
def test_full_size_layout_equals_upstream(name, reference_dir, tmp_path):
    """The converted state dict of every full-size model equals shared/reference/checkpoints/NAME.json,
    or tests/layouts/NAME.json for the models upstream configures without publishing weights
    (slab_pvt_small, slab_pvt_medium), written from upstream's model definitions in the same format."""
    from slab_ms.convert.mapping import ms_to_torch
    from slab_ms.models.registry import infer_model
    net = slab_ms.create_model(name)
    sd = ms_to_torch(net, {k: p.asnumpy() for k, p in net.parameters_and_names()})
    layout = [[k, list(v.shape), str(v.dtype)] for k, v in sd.items()]
    path = os.path.join(reference_dir, "checkpoints", name + ".json")
    with open(path if os.path.isfile(path) else os.path.join(ROOT, "tests", "layouts", name + ".json")) as f:
        ref = json.load(f)
    assert layout == ref["state_dict"]
    # the converter recognises the layout alone as this model with its registered defaults
    assert infer_model({k: tuple(shape) for k, shape, _ in ref["state_dict"]}) == (name, {})
    # PyTorch counts every nn.Parameter, also the ones upstream never reads (SLAB-DeiT's cls_token,
    # CSwin's SLA scale), which are frozen here: count the float tensors that are not BN statistics.
    n_params = sum(int(np.prod(p.shape)) for name, p in net.parameters_and_names()
                   if p.dtype == ms.float32 and not name.endswith(("moving_mean", "moving_variance")))
    assert n_params == ref["num_parameters"]

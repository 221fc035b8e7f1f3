"""The converter on hostile and broken input: a one-line error, no output file, no code run;
real-world checkpoints with foreign objects convert; a fuzz of a few hundred mutated files."""
import argparse
import io
import os
import pickle
import random
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

import slab_ms
from slab_ms.convert import torch_ref
from conftest import ROOT
from slab_ms.convert.api import mindspore_to_torch, torch_to_mindspore
from slab_ms.convert.torch_io import CheckpointError

MODEL = "slab_deit_tiny"
SIZES = dict(embed_dim=16, depth=1, num_heads=2, num_classes=3)   # small: the fuzz converts hundreds
SETS = [f"--set={k}={v}" for k, v in SIZES.items()]


class _Exploit:
    """Unpickling this runs ``touch PWNED`` (with a real unpickler)."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def cli(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid upstream-style checkpoint of the small model, and its conversion."""
    d = tmp_path_factory.mktemp("good")
    sd = torch_ref.create_model(MODEL, **SIZES).state_dict()
    pth = d / "good.pth"
    torch.save({"model": sd, "epoch": 3}, pth)
    ckpt = d / "good.ckpt"
    torch_to_mindspore(str(pth), str(ckpt), model=MODEL, overrides=SIZES)
    return types.SimpleNamespace(sd=sd, pth=pth, ckpt=ckpt, params=slab_ms.read_ms_checkpoint(ckpt))


def _cases(good, d):
    """(name, --from, input path, extra args, expected text in the error)."""
    (d / "empty.pth").write_bytes(b"")
    raw = good.pth.read_bytes()
    (d / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    (d / "random.pth").write_bytes(random.Random(1).randbytes(4096))
    (d / "exploit.pkl").write_bytes(pickle.dumps(_Exploit()))   # a bare pickle, as torch<1.6 wrote
    torch.save(_Exploit(), d / "exploit_only.pth")               # the zip format, nothing but the payload
    torch.save({"model": _Exploit()}, d / "exploit_as_model.pth")
    torch.save({"model": good.sd, "payload": _Exploit()}, d / "exploit_beside.pth")
    extra = dict(good.sd, **{"extra.weight": torch.zeros(3)})
    torch.save({"model": extra}, d / "extra_key.pth")
    missing = {k: v for k, v in good.sd.items() if k != "head.bias"}
    torch.save({"model": missing}, d / "missing_key.pth")
    shape = dict(good.sd, **{"head.weight": torch.zeros(4, 16)})
    torch.save({"model": shape}, d / "shape.pth")
    (d / "random.ckpt").write_bytes(random.Random(2).randbytes(4096))
    ms_raw = good.ckpt.read_bytes()
    (d / "truncated.ckpt").write_bytes(ms_raw[: len(ms_raw) // 3])
    return [
        ("missing file", "torch", d / "nothing.pth", SETS, "no such file"),
        ("empty file", "torch", d / "empty.pth", SETS, "empty file"),
        ("truncated", "torch", d / "truncated.pth", SETS, "not a PyTorch checkpoint"),
        ("random bytes", "torch", d / "random.pth", SETS, "not a PyTorch checkpoint"),
        ("bare exploit pickle", "torch", d / "exploit.pkl", SETS, "not a PyTorch checkpoint"),
        ("exploit only", "torch", d / "exploit_only.pth", SETS, "not a state dict"),
        ("exploit as the model", "torch", d / "exploit_as_model.pth", SETS, "no state dict"),
        ("wrong architecture", "torch", good.pth, ["--model", "deit_tiny_prepbn"] + SETS, "missing keys"),
        ("extra key", "torch", d / "extra_key.pth", SETS, "1 unexpected keys: extra.weight"),
        ("missing key", "torch", d / "missing_key.pth", SETS, "1 missing keys: head.bias"),
        ("shape mismatch", "torch", d / "shape.pth", SETS, "head.weight [4, 16] vs model [3, 16]"),
        ("random .ckpt", "mindspore", d / "random.ckpt", SETS, "not a readable MindSpore checkpoint"),
        ("truncated .ckpt", "mindspore", d / "truncated.ckpt", SETS, "not a readable MindSpore checkpoint"),
        (".pth given as .ckpt", "mindspore", good.pth, SETS, "not a readable MindSpore checkpoint"),
    ]


def test_broken_and_hostile_files_fail_with_one_line_and_write_nothing(good, tmp_path):
    for name, source, src, extra, expected in _cases(good, tmp_path):
        out = tmp_path / ("out.ckpt" if source == "torch" else "out.pth")
        model = [] if "--model" in extra else ["--model", MODEL]
        before = set(os.listdir(tmp_path))
        r = cli("--from", source, "--input", str(src), "--output", str(out), *model, *extra, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1, (name, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (name, r.stderr)
        assert set(os.listdir(tmp_path)) == before, name   # no output, no temp file, no PWNED
    r = cli("--from", "torch", "--input", str(tmp_path / "exploit_beside.pth"), "--output", str(tmp_path / "o.ckpt"),
            "--model", MODEL, *SETS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr   # the state dict next to the payload converts
    assert not (tmp_path / "PWNED").exists()


def test_real_world_checkpoint_with_foreign_objects_converts(good, tmp_path, monkeypatch):
    """argparse.Namespace, a yacs CfgNode and an optimizer state next to the weights: only the
    tensors of the state dict are read, nothing is imported or executed."""
    yacs = types.ModuleType("yacs")
    yacs.config = types.ModuleType("yacs.config")

    class CfgNode(dict):   # what yacs.config.CfgNode is: a dict subclass with attribute access
        pass
    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    yacs.config.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", yacs.config)
    cfg = CfgNode(MODEL=CfgNode(NAME="slab_deit", DROP_PATH_RATE=0.1), TRAIN=CfgNode(EPOCHS=300))
    model = torch_ref.create_model(MODEL, **SIZES)
    model.load_state_dict(good.sd)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 3, 224, 224)).sum().backward()
    opt.step()
    torch.save({"model": good.sd, "optimizer": opt.state_dict(), "lr_scheduler": {"last_epoch": 5},
                "args": argparse.Namespace(lr=1e-3, model=MODEL), "config": cfg, "epoch": 5,
                "max_accuracy": 74.3}, tmp_path / "real.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")   # the reader must not need it
    monkeypatch.delitem(sys.modules, "yacs")
    out = tmp_path / "real.ckpt"
    torch_to_mindspore(str(tmp_path / "real.pth"), str(out))   # architecture inferred too
    got = slab_ms.read_ms_checkpoint(out)
    assert list(got) == list(good.params)
    assert all(np.array_equal(got[k], good.params[k]) for k in got)


def _shuffle_members(data, rng):
    src = zipfile.ZipFile(io.BytesIO(data))
    names = src.namelist()
    rng.shuffle(names)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for n in names:
            dst.writestr(src.getinfo(n), src.read(n))
    return out.getvalue()


def _mutate(raw, kind, rng):
    b = bytearray(raw)
    if kind == "truncate":
        return bytes(b[: rng.randrange(len(b))])
    if kind == "shuffle":
        return _shuffle_members(raw, rng)
    for _ in range(1 if kind == "flip" else rng.randint(2, 20)):
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
    return bytes(b)


def test_fuzzed_checkpoints_give_a_clean_error_or_a_correct_conversion(good, tmp_path):
    """300 mutated .pth files (bit flips, truncations, shuffled zip members) and 90 mutated .ckpt
    files. A .pth either fails with a one-line CheckpointError and no output, or converts to
    exactly the original weights (zip CRCs catch flipped data). A .ckpt has no checksum: when it
    converts, the result must be the faithful conversion of what the file holds."""
    rng = random.Random(0)
    outcomes = {"error": 0, "converted": 0}
    raw = good.pth.read_bytes()
    for i in range(300):
        kind = ("flip", "flips", "truncate", "shuffle")[i % 4]
        src, out = tmp_path / f"m{i}.pth", tmp_path / f"m{i}.ckpt"
        src.write_bytes(_mutate(raw, kind, rng))
        try:
            torch_to_mindspore(str(src), str(out), model=MODEL, overrides=SIZES)
        except CheckpointError as e:
            assert "\n" not in str(e) and not out.exists(), (i, kind, str(e))
            outcomes["error"] += 1
        else:
            got = slab_ms.read_ms_checkpoint(out)
            assert list(got) == list(good.params), (i, kind)
            assert all(np.array_equal(got[k], good.params[k]) for k in got), (i, kind)
            outcomes["converted"] += 1
        for f in (src, out):
            f.unlink(missing_ok=True)
    assert outcomes["error"] > 100 and outcomes["converted"] >= 75   # every shuffle converts

    raw = good.ckpt.read_bytes()
    for i in range(90):
        kind = ("flip", "flips", "truncate")[i % 3]
        src, out = tmp_path / f"k{i}.ckpt", tmp_path / f"k{i}.pth"
        src.write_bytes(_mutate(raw, kind, rng))
        try:
            mindspore_to_torch(str(src), str(out), model=MODEL, overrides=SIZES)
        except CheckpointError as e:
            assert "\n" not in str(e) and not out.exists(), (i, kind, str(e))
        else:
            held = slab_ms.read_ms_checkpoint(src)
            back = tmp_path / "back.ckpt"
            torch_to_mindspore(str(out), str(back), model=MODEL, overrides=SIZES, force=True)
            again = slab_ms.read_ms_checkpoint(back)
            assert list(again) == list(held), (i, kind)
            assert all(np.array_equal(again[k], held[k], equal_nan=True) for k in held), (i, kind)
        for f in (src, out):
            f.unlink(missing_ok=True)

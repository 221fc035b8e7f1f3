"""export.py and infer.py: MindIR (dynamic batch) and ONNX reproduce the MindSpore model; infer.py
preprocesses exactly as validate.py and names the runtime it used."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms

import slab_ms
from slab_ms.checkpoint import save_ms_checkpoint
from slab_ms.engine import data as data_lib

from conftest import ROOT, SMALL_VARIANTS, SWIN_MINI, randomize_ms, rel_err, tiny_digits_model, undecodable_images


def export(*args):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mini_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini")
    net = randomize_ms(slab_ms.create_model("slab_swin_tiny", **SWIN_MINI), seed=7, bias_scale=0.2)
    path = str(d / "mini.ckpt")
    save_ms_checkpoint({k: v.asnumpy() for k, v in net.parameters_and_names()}, path)
    return path


def _reference(ckpt, x):
    net = slab_ms.create_model("slab_swin_tiny", **SWIN_MINI)
    slab_ms.load_checkpoint(net, ckpt)
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


@pytest.mark.parametrize("reparam", [False, True])
def test_mindir_dynamic_batch_reproduces_the_model(mini_ckpt, tmp_path, reparam):
    out = str(tmp_path / "m.mindir")
    sets = [f"--set={k}={v!r}".replace(" ", "") for k, v in SWIN_MINI.items()]
    meta = export("--model", "slab_swin_tiny", "--ckpt_path", mini_ckpt, "--format", "MINDIR", "--output", out,
                  "--dynamic-batch", *sets, *(["--reparam"] if reparam else []))
    assert meta["input_shape"][0] is None and meta["reparameterized"] == reparam
    if reparam:
        assert meta["norms_left"] == []
    graph = ms.nn.GraphCell(ms.load(out))
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    expected = _reference(mini_ckpt, x)
    for b in (1, 3):   # one file, two batch sizes
        got = graph(ms.Tensor(x[:b])).asnumpy()
        assert rel_err(got, expected[:b]) < 1e-5, rel_err(got, expected[:b])


@pytest.mark.parametrize("name", ["deit_tiny_prepbn", "slab_deit_tiny", "pvt_tiny_prepbn", "slab_pvt_tiny",
                                  "slab_cswin_tiny"])
def test_every_family_exports_fused_with_a_dynamic_batch(name, tmp_path):
    """DeiT (class token, softmax and SLA), PVT (spatial reduction, SLA) and CSwin (stripes)."""
    kw = dict(SMALL_VARIANTS[name], num_classes=10)
    net = randomize_ms(slab_ms.create_model(name, **kw), seed=5, bias_scale=0.2)
    ckpt, out = str(tmp_path / "m.ckpt"), str(tmp_path / "m.mindir")
    save_ms_checkpoint({k: v.asnumpy() for k, v in net.parameters_and_names()}, ckpt)
    sets = [f"--set={k}={v!r}".replace(" ", "") for k, v in kw.items()]
    meta = export("--model", name, "--ckpt_path", ckpt, "--output", out, "--dynamic-batch", "--reparam", *sets)
    assert meta["norms_left"] == [] and meta["input_shape"][0] is None
    net.set_train(False)
    x = np.random.default_rng(2).standard_normal((3, 3, 224, 224)).astype(np.float32)
    expected = net(ms.Tensor(x)).asnumpy()
    graph = ms.nn.GraphCell(ms.load(out))
    for b in (1, 3):
        got = graph(ms.Tensor(x[:b])).asnumpy()
        assert rel_err(got, expected[:b]) < 1e-5, (b, rel_err(got, expected[:b]))


def test_onnx_runs_under_onnxruntime(mini_ckpt, tmp_path):
    import onnxruntime as ort   # a test dependency (requirements-test.txt)
    out = str(tmp_path / "m.onnx")
    sets = [f"--set={k}={v!r}".replace(" ", "") for k, v in SWIN_MINI.items()]
    export("--model", "slab_swin_tiny", "--ckpt_path", mini_ckpt, "--format", "ONNX", "--output", out,
           "--batch", "2", "--reparam", *sets)
    sess = ort.InferenceSession(out)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert rel_err(got, _reference(mini_ckpt, x)) < 1e-5


def test_export_refuses_bad_requests(mini_ckpt, tmp_path):
    base = [sys.executable, os.path.join(ROOT, "export.py"), "--model", "slab_swin_tiny", "--ckpt_path", mini_ckpt]
    cases = [(["--format", "ONNX", "--dynamic-batch", "--output", str(tmp_path / "a.onnx")], "no dynamic shapes"),
             (["--output", str(tmp_path / "a.onnx")], "must end with .mindir"),
             (["--output", str(tmp_path / "a.mindir")], "does not fit"),   # full-size model, mini checkpoint
             (["--model", "nope", "--output", str(tmp_path / "b.mindir")], "unknown model")]
    for extra, pattern in cases:
        p = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 1 and pattern in p.stderr.strip().splitlines()[-1], p.stderr[-1500:]
        assert not any(f.suffix in (".mindir", ".onnx") for f in tmp_path.iterdir())


def test_infer_matches_the_validation_pipeline(tmp_path):
    digits, config, cfg, net, ckpt = tiny_digits_model(tmp_path)
    logits = []   # validate.py's path: eval_loader over val/, in file order
    for x, _ in data_lib.eval_loader(cfg).create_tuple_iterator(num_epochs=1):
        logits.append(net(x).asnumpy().astype(np.float64))
    logits = np.concatenate(logits)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    model_file = str(tmp_path / "tiny.mindir")
    export("--config", config, "--ckpt_path", ckpt, "--reparam", "--dynamic-batch", "--output", model_file)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--model_file", model_file, "--images",
                        os.path.join(digits, "val")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("runtime: mindspore nn.GraphCell (cpu); ") or \
        p.stdout.startswith("runtime: mindspore_lite")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["images"] == 364 and len(set(np.round(result["top1_prob"], 4))) > 10
    assert result["top1"] == [str(i) for i in probs.argmax(1)]   # class names from the data's folders
    np.testing.assert_allclose(result["top1_prob"], probs.max(1), atol=1e-5)

    # An image that MindSpore's own Decode would crash on (segfault) is a one-line error
    val0 = os.path.join(digits, "val", "0")
    jpeg, _ = undecodable_images(os.path.join(val0, sorted(os.listdir(val0))[0]))
    (tmp_path / "damaged.jpg").write_bytes(jpeg)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--model_file", model_file, "--images",
                        str(tmp_path / "damaged.jpg")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = (p.stderr.strip().splitlines() or [""])[-1]
    assert p.returncode == 1 and last.startswith("error: ") and "cannot decode image" in last, \
        (p.returncode, p.stderr[-1500:])


def test_infer_refuses_bad_input(tmp_path):
    bogus = tmp_path / "x.mindir"
    bogus.write_bytes(b"not a model")
    cases = [(["--model_file", str(tmp_path / "none.mindir"), "--images", str(tmp_path)], "no such file"),
             (["--model_file", str(bogus), "--images", str(tmp_path)], "no preprocessing known"),
             (["--model_file", str(bogus), "--images", str(tmp_path / "nowhere"),
               "--config", os.path.join(ROOT, "configs", "quickstart_digits.yaml")], "no such file or folder")]
    for extra, pattern in cases:
        p = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), *extra], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 1 and pattern in p.stderr.strip().splitlines()[-1], p.stderr[-1500:]
        assert "Traceback" not in p.stderr

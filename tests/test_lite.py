"""MindSpore Lite for real: MindIR exported by MindSpore 2.10 with ``--mindir-compat 2.0`` runs in
Lite 2.0.0's C++ runtime (slab_ms/deploy/lite_runner, built by scripts/get_lite.sh, which scripts/test.sh
runs first) and gives MindSpore's logits; infer.py --runtime lite-cpp scores the digits as the
validation pipeline does; unknown ops and damaged files are one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms

from slab_ms.deploy import build_for_export, default_lite_runner, export_model
from slab_ms.engine import data as data_lib
from slab_ms.deploy.mindir import CompatError, convert_file

from conftest import ROOT, SMALL_VARIANTS, randomize_ms, rel_err, tiny_digits_model

RUNNER = default_lite_runner()
needs_lite = pytest.mark.skipif(RUNNER is None, reason="Lite runner not built (bash scripts/get_lite.sh)")
# one fused model per family, dynamic batch: Swin with SLA and softmax, DeiT with softmax and SLA, PVT with
# spatial reduction and with SLA, CSwin
FAMILIES = ["slab_swin_tiny", "swin_tiny_prepbn", "deit_tiny_prepbn", "slab_deit_tiny", "pvt_tiny_prepbn",
            "slab_pvt_tiny", "slab_cswin_tiny"]


def _export_compat(name, out, **kw):
    net, meta = build_for_export(name, overrides=kw, dynamic_batch=True, reparam=True)
    randomize_ms(net, seed=3, bias_scale=0.2)
    net.set_train(False)
    export_model(net, meta, out, mindir_compat="2.0")
    return net


def _lite(model_file, x, tmp_path):
    src, dst = str(tmp_path / "in.npy"), str(tmp_path / "out.npy")
    np.save(src, x)
    p = subprocess.run([RUNNER, model_file, src, dst], capture_output=True, text=True, timeout=300)
    return p, (np.load(dst) if p.returncode == 0 else None)


@needs_lite
@pytest.mark.parametrize("name", FAMILIES)
def test_lite_runtime_gives_mindspores_logits(name, tmp_path):
    model_file = str(tmp_path / f"{name}.mindir")
    net = _export_compat(name, model_file, **SMALL_VARIANTS[name])
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        p, got = _lite(model_file, x, tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        want = net(ms.Tensor(x)).asnumpy()
        assert got.shape == want.shape and rel_err(got, want) < 1e-5, (batch, rel_err(got, want))


@needs_lite
def test_infer_lite_cpp_scores_the_digits_as_validation_does(tmp_path):
    digits, config, cfg, net, ckpt = tiny_digits_model(tmp_path)
    logits = np.concatenate([net(x).asnumpy() for x, _ in data_lib.eval_batches(data_lib.eval_loader(cfg))])
    model_file = str(tmp_path / "tiny.mindir")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--config", config, "--ckpt_path", ckpt,
                        "--reparam", "--dynamic-batch", "--mindir-compat", "2.0", "--output", model_file],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--model_file", model_file, "--images",
                        os.path.join(digits, "val"), "--runtime", "lite-cpp", "--batch_size", "128", "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("runtime: mindspore_lite C++ (lite_runner) (cpu)")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    labels = np.array([int(os.path.basename(os.path.dirname(f))) for f in
                       sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(digits, "val")) for f in fs)])
    assert result["images"] == 364
    assert result["top1"] == [str(i) for i in logits.argmax(1)]
    assert result["folder_top1"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)), abs=1e-9)


def test_compat_rewrite_names_an_unknown_op(tmp_path):
    from mindspore.train import mind_ir_pb2
    src = str(tmp_path / "m.mindir")
    export_model(*build_for_export("slab_deit_tiny", overrides=SMALL_VARIANTS["slab_deit_tiny"], dynamic_batch=True,
                                   reparam=True), src)
    m = mind_ir_pb2.ModelProto()
    with open(src, "rb") as f:
        m.ParseFromString(f.read())
    prim = next(p for p in m.primitives if p.op_type == "ReLU")   # SLA's kernel
    prim.op_type = "FancyReLU"
    with open(src, "wb") as f:
        f.write(m.SerializeToString())
    with pytest.raises(CompatError, match="^ops not in the Lite 2.0 compat table: FancyReLU$"):
        convert_file(src, str(tmp_path / "out.mindir"))
    assert not (tmp_path / "out.mindir").exists()
    (tmp_path / "junk.mindir").write_bytes(b"\x00not a model" * 10)
    with pytest.raises(CompatError, match="cannot read MindIR"):
        convert_file(str(tmp_path / "junk.mindir"), str(tmp_path / "out.mindir"))


@needs_lite
def test_a_damaged_mindir_is_a_one_line_error_not_a_crash(tmp_path):
    good = str(tmp_path / "good.mindir")
    _export_compat("slab_deit_tiny", good, **SMALL_VARIANTS["slab_deit_tiny"])
    data = open(good, "rb").read()
    x = np.zeros((1, 3, 224, 224), np.float32)
    for name, blob in (("truncated", data[: len(data) // 2]), ("random", np.random.default_rng(0).bytes(4096)),
                       ("empty", b"")):
        path = str(tmp_path / f"{name}.mindir")
        with open(path, "wb") as f:
            f.write(blob)
        p, _ = _lite(path, x, tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (name, p.stderr[-1000:])

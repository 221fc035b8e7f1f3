"""Converted official checkpoints reproduce the official PyTorch outputs (shared/reference/golden)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms

import slab_ms
from conftest import ROOT, SWIN_MINI, rel_err

GOLDEN = [("slab_swin_mini", "slab_swin_tiny"), ("swin_prepbn_mini", "swin_tiny_prepbn")]


@pytest.mark.parametrize("golden,model", GOLDEN)
def test_converted_golden_matches_upstream_logits(golden, model, reference_dir, tmp_path):
    pth = os.path.join(reference_dir, "golden", golden + ".pth")
    ckpt = tmp_path / "model.ckpt"
    overrides = [f"--set={k}={v}".replace(" ", "") for k, v in SWIN_MINI.items()]
    run = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), "--from", "torch", "--model", model,
                          "--input", pth, "--output", str(ckpt)] + overrides, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    net = slab_ms.create_model(model, **SWIN_MINI)
    slab_ms.load_checkpoint(net, str(ckpt))
    ref = np.load(os.path.join(reference_dir, "golden", golden + ".npz"))
    x = ms.Tensor(ref["input"])

    net.set_train(False)
    assert rel_err(net(x).asnumpy(), ref["logits_eval"]) <= 1e-5

    net.set_train(True)  # one training forward: batch statistics, PRepBN mixing at lam = 0.5
    assert rel_err(net(x).asnumpy(), ref["logits_train"]) <= 1e-5

    params = dict(net.parameters_and_names())
    names = [str(n) for n in ref["counter_names"]]
    got = np.array([int(params[n].asnumpy()) for n in names], dtype=np.int64)
    np.testing.assert_array_equal(got, ref["counters_after_train_forward"])
    if golden == "slab_swin_mini":  # every PRepBN module moved by exactly one step
        assert len(names) > 0 and all(int(params[n].asnumpy()) == 29999 for n in names if n.endswith(".iter"))

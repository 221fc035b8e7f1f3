"""Converted official checkpoints reproduce the official PyTorch outputs (shared/reference/golden)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms

import slab_ms
from conftest import GOLDEN_MINIS, ROOT, rel_err


@pytest.mark.parametrize("golden", sorted(GOLDEN_MINIS))
def test_converted_golden_matches_upstream_logits(golden, reference_dir, tmp_path):
    model, overrides = GOLDEN_MINIS[golden]
    pth = os.path.join(reference_dir, "golden", golden + ".pth")
    ckpt = tmp_path / "model.ckpt"
    sets = [f"--set={k}={v}".replace(" ", "") for k, v in overrides.items()]
    run = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), "--from", "torch", "--model", model,
                          "--input", pth, "--output", str(ckpt)] + sets, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    net = slab_ms.create_model(model, **overrides)
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
    iters = [n for n in names if n.endswith(".iter")]
    if iters:  # every PRepBN module moved by exactly one step from half-way through its schedule
        for n in iters:
            total = int(params[n[: -len("iter")] + "total_step"].asnumpy())
            assert int(params[n].asnumpy()) == total // 2 - 1, n

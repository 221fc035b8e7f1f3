"""convert.py --verify on a vision model: a PyTorch reference checkpoint (slab_ms.convert.torch_ref) with
trained-looking weights converts, the verify line reports a small difference and the command exits 0;
weights that do not match the reference model give a large one."""
import os
import re
import subprocess
import sys

import torch

from slab_ms.convert import torch_ref
from conftest import ROOT

MODEL = "slab_deit_tiny"
SIZES = {"embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 10}
VERIFY = re.compile(r"^verify: max\|diff\| = (\S+), relative = (\S+) ", re.M)


def _reference_checkpoint(path, seed=0):
    """A mini SLAB-DeiT state dict with weights far from init: every float tensor redrawn, BN running
    variances positive, so the logits are O(1) and a wrong conversion shows."""
    torch.manual_seed(seed)
    sd = torch_ref.create_model(MODEL, **SIZES).state_dict()
    for k, v in sd.items():
        if not v.is_floating_point():
            continue
        if k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand_like(v)
        else:
            sd[k] = 0.2 * torch.randn_like(v)
    torch.save({"model": sd}, path)
    return sd


def _convert(src, dst):
    sets = [f"--set={k}={v}" for k, v in SIZES.items()]
    return subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), "--from", "torch", "--model", MODEL,
                           *sets, "--input", src, "--output", dst, "--verify"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_convert_verify_reports_a_small_difference_for_a_vision_model(tmp_path):
    src, dst = str(tmp_path / "deit.pth"), str(tmp_path / "deit.ckpt")
    _reference_checkpoint(src)
    p = _convert(src, dst)
    assert p.returncode == 0, p.stderr[-2000:]
    m = VERIFY.search(p.stdout)
    assert m, p.stdout
    diff, rel = float(m.group(1)), float(m.group(2))
    assert rel < 1e-5 and diff < 1e-4, (diff, rel)
    assert os.path.isfile(dst)

    # The check can fail: the reference on other weights of the same architecture is far off.
    from slab_ms.convert.verify import verify_conversion
    other = str(tmp_path / "other.pth")
    _reference_checkpoint(other, seed=1)
    diff, rel = verify_conversion(MODEL, dict(SIZES), other, dst)
    assert rel > 1e-2, (diff, rel)

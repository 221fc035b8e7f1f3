import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import slab_ms  # noqa: F401  (before mindspore: oneDNN ISA)
import mindspore as ms
from slab_ms.checkpoint import save_ms_checkpoint
from slab_ms.engine.common import build_model
from slab_ms.engine.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARED = os.environ.get("SLAB_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
REFERENCE = os.path.join(SHARED, "reference")

# The small variants of shared/reference/README.md.
SWIN_MINI = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], num_classes=10, drop_path_rate=0.0)
_PVT_MINI = dict(embed_dims=[16, 32, 48, 64], num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2], depths=[1, 1, 1, 1])
# golden name -> (registered model it is built as, overrides), as in shared/reference/README.md.
GOLDEN_MINIS = {
    "slab_swin_mini": ("slab_swin_tiny", SWIN_MINI),
    "swin_prepbn_mini": ("swin_tiny_prepbn", SWIN_MINI),
    "deit_prepbn_mini": ("deit_tiny_prepbn", dict(embed_dim=48, depth=2, num_heads=3)),
    "slab_deit_mini": ("slab_deit_tiny", dict(embed_dim=48, depth=2, num_heads=3)),
    "pvt_prepbn_mini": ("pvt_tiny_prepbn", _PVT_MINI),
    "slab_pvt_mini": ("slab_pvt_tiny", _PVT_MINI),
    "slab_cswin_mini": ("slab_cswin_tiny", dict(embed_dim=16, depth=[1, 2, 1, 1], num_heads=[1, 2, 4, 8])),
}
for _name, (_model, _over) in GOLDEN_MINIS.items():
    GOLDEN_MINIS[_name] = (_model, dict(_over, num_classes=10, drop_path_rate=0.0))

# A small variant of every registered model (224 input: SLA position encodings are sized for it),
# used by the parity, fusion and export tests; the golden minis where one exists.
SMALL_VARIANTS = {model: {k: v for k, v in over.items() if k not in ("num_classes", "drop_path_rate")}
                  for model, over in GOLDEN_MINIS.values()}
SMALL_VARIANTS.update({
    "slab_swin_small": dict(embed_dim=16, depths=[1, 1, 3, 1], num_heads=[1, 2, 4, 8]),
    "slab_swin_base": dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[2, 4, 8, 16]),
    "deit_small_prepbn": dict(embed_dim=48, depth=2, num_heads=2),
    "slab_deit_small": dict(embed_dim=64, depth=2, num_heads=4),
    "pvt_small_prepbn": dict(_PVT_MINI, depths=[1, 2, 1, 1]),
    "pvt_medium_prepbn": dict(_PVT_MINI, depths=[1, 1, 2, 1]),
    "slab_pvt_small": dict(_PVT_MINI, depths=[1, 2, 1, 1]),
    "slab_pvt_medium": dict(_PVT_MINI, depths=[1, 1, 2, 1]),
    "slab_cswin_small": dict(embed_dim=16, depth=[1, 1, 2, 2], num_heads=[2, 2, 4, 8]),
})


def rel_err(got, ref):
    """The project's parity metric: max|diff| / max(1, max|ref|)."""
    return float(np.abs(np.asarray(got) - np.asarray(ref)).max() / max(1.0, float(np.abs(ref).max())))


def undecodable_images(png_path):
    """Two files made from a valid PNG that pass the start-up content check (magic, end marker)
    but cannot be decoded: ``(jpeg, png)`` bytes. The JPEG's first Huffman table has impossible
    code counts (MindSpore 2.10's own Decode segfaults on it); the PNG's IDAT stream is garbled."""
    import io
    import struct
    from PIL import Image
    buf = io.BytesIO()
    with Image.open(png_path) as im:
        im.convert("RGB").save(buf, "JPEG", quality=90)
    jpeg = bytearray(buf.getvalue())
    i = jpeg.index(b"\xff\xc4")
    jpeg[i + 5:i + 21] = b"\xff" * 16
    with open(png_path, "rb") as f:
        png = bytearray(f.read())
    i = png.index(b"IDAT")
    n = struct.unpack(">I", png[i - 4:i])[0]
    png[i + 4:i + 4 + n] = bytes(255 - b for b in png[i + 4:i + 4 + n])
    return bytes(jpeg), bytes(png)


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield


@pytest.fixture(scope="session")
def reference_dir():
    if not os.path.isdir(REFERENCE):
        pytest.fail(f"shared reference data not found at {REFERENCE} (set SLAB_SHARED)")
    return REFERENCE


def kill_when_written(cmd, path, what, timeout=300):
    """Start ``cmd`` from the repository root (its own session, output discarded) and SIGKILL it,
    children included, as soon as ``path`` exists; fails when the run ends or times out first."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None and time.time() < deadline, f"the run ended before writing {what}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_two_workers(config, out, *overrides, timeout=900):
    """``scripts/run_distribute.sh CONFIG 2 --ckpt_save_dir OUT ...`` with this interpreter's bin on
    PATH (msrun starts the ``python`` found there); asserts success, checks that both ranks logged
    the same parameter digest (weights, counters, BN statistics) and returns summary.json."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_distribute.sh"), config, "2",
                        "--ckpt_save_dir", str(out), *overrides],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-3000:]
    return assert_identical_replicas(out)


def assert_identical_replicas(out, world=2):
    """Each rank's ``logs/worker_<rank>.log`` under ``out`` logged one parameter digest (weights,
    counters, BN statistics) and they are equal; returns ``out/summary.json``."""
    digests = []
    for rank in range(world):
        log = open(os.path.join(out, "logs", f"worker_{rank}.log")).read()
        digests += re.findall(r"\[rank (\d+)\] parameter digest ([0-9a-f]{16})", log)
    assert sorted(int(r) for r, _ in digests) == list(range(world)), digests
    assert len({d for _, d in digests}) == 1, f"replicas differ: {digests}"
    return json.loads(open(os.path.join(out, "summary.json")).read())


def load_script(name):
    """A module of scripts/ (e.g. ``make_digits``), loaded from its file: scripts/ is not a package."""
    spec = importlib.util.spec_from_file_location(f"_slab_script_{name}", os.path.join(ROOT, "scripts", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_digits = load_script("make_digits")


def randomize_ms(net, seed=0, bias_scale=0.02, weight_scale=0.02):
    """Trained-looking state: weights at init scale, BN statistics and affines non-trivial,
    alpha != 1, biases non-zero (``bias_scale``)."""
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():
        if p.dtype == ms.int64:
            continue
        last = name.rsplit(".", 1)[-1]
        shape = p.shape
        if last == "moving_variance":
            v = rng.random(shape) + 0.5
        elif last == "moving_mean":
            v = 0.1 * rng.standard_normal(shape)
        elif last == "alpha":
            v = np.full(shape, 0.7)
        elif last == "gamma":
            v = 1 + 0.1 * rng.standard_normal(shape)
        elif last in ("bias", "beta"):
            v = bias_scale * rng.standard_normal(shape)
        else:
            v = weight_scale * rng.standard_normal(shape)
        p.set_data(ms.Tensor(v.astype(np.float32)))
    return net


# The tiny quickstart-shaped model of the export, Lite and inference tests.
TINY_KW = {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "attn_type": "LS", "window_size": 8}


def tiny_digits_model(tmp_path):
    """The digits tree, a quickstart config at a tiny size on it, and a random model whose outputs
    depend on the image, saved: ``(digits, config path, cfg, net in eval mode, checkpoint path)``."""
    digits = str(tmp_path / "digits")
    make_digits.build(digits, size=32)
    config = tmp_path / "tiny.yaml"
    with open(os.path.join(ROOT, "configs", "quickstart_digits.yaml")) as f:
        cfg_data = yaml.safe_load(f)
    cfg_data.update(model_kwargs=TINY_KW, data_dir=digits)
    config.write_text(yaml.safe_dump(cfg_data))
    cfg = load_config(str(config))
    net = randomize_ms(build_model(cfg), seed=11, weight_scale=0.08)
    ckpt = str(tmp_path / "tiny.ckpt")
    save_ms_checkpoint({k: v.asnumpy() for k, v in net.parameters_and_names()}, ckpt)
    net.set_train(False)
    return digits, str(config), cfg, net, ckpt

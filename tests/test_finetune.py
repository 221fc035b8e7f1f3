"""Fine-tuning as timm and mindcv users do it: ``ckpt_path`` with a checkpoint of another
``num_classes`` re-initialises the classifier and loads the rest strictly; the PRepBN schedule of
the checkpoint is kept unless the config sets one. Pretrained on handwritten digits 0-5, fine-tuned
on 6-9: the fine-tuned run beats training from scratch at the same small budget."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, make_digits


from slab_ms.checkpoint import load_pretrained, read_ms_checkpoint  # noqa: E402
from slab_ms.errors import CheckpointError  # noqa: E402

SMALL = ["--model_kwargs", "{embed_dim: 16, depths: [1, 1], num_heads: [1, 2], attn_type: LS, window_size: 8}",
         "--log_interval", "5", "--plot", "false"]
BUDGET = ["--num_samples", "96", "--epoch_size", "2", "--bn_recalibrate_epochs", "0"]


def _split(digits, root, classes):
    for split in ("train", "val"):
        for c in classes:
            os.makedirs(root / split / c)
            for f in os.listdir(os.path.join(digits, split, c)):
                os.symlink(os.path.join(digits, split, c, f), root / split / c / f)
    return str(root)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(checkpoint pretrained on digits 0-5 with a finished PRepBN schedule, data tree of 6-9)."""
    base = tmp_path_factory.mktemp("finetune")
    digits = str(base / "digits")
    make_digits.build(digits, size=32)
    old = _split(digits, base / "old", [str(c) for c in range(6)])
    new = _split(digits, base / "new", [str(c) for c in range(6, 10)])
    out = base / "pretrain"
    _train("quickstart_digits.yaml", old, out, "--num_classes", "6", "--epoch_size", "4", "--prepbn_fraction", "0.5")
    return str(out / "final.ckpt"), new, base


def _train(config, data, out, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", config),
           "--data_dir", data, "--ckpt_save_dir", str(out), *SMALL, *extra]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{' '.join(cmd)}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return json.loads((out / "summary.json").read_text()), (out / "train.log").read_text()


def test_finetuning_beats_training_from_scratch(pretrained):
    ckpt, new, base = pretrained
    tuned, log = _train("finetune_digits.yaml", new, base / "tuned", "--ckpt_path", ckpt, *BUDGET)
    assert "re-initialised head.weight, head.bias" in log
    assert "PRepBN schedule kept from" in log and "(finished: RepBN only)" in log
    history = json.loads((base / "tuned" / "history.json").read_text())
    assert history["steps"] and all(s["lambda"] == 0.0 for s in history["steps"])   # stays pure RepBN
    # every parameter but the classifier started from the checkpoint: the first conv moved only by training
    pre = read_ms_checkpoint(ckpt)
    assert pre["head.weight"].shape == (6, 32) and read_ms_checkpoint(str(base / "tuned" / "final.ckpt"))[
        "head.weight"].shape == (4, 32)
    scratch, _ = _train("quickstart_digits.yaml", new, base / "scratch", "--num_classes", "4", *BUDGET)
    assert tuned["top1"] > scratch["top1"] + 0.1, (tuned["top1"], scratch["top1"])


def test_a_schedule_in_the_config_restarts_prepbn_and_other_mismatches_stay_errors(pretrained):
    """Built without training (no compile): ``prepbn_fraction`` set -> the counters restart; an
    architecture mismatch outside the classifier is still a strict error naming the parameter."""
    from slab_ms.engine.config import load_config, parse_overrides
    from slab_ms.engine.common import build_model
    from slab_ms.engine.trainer import Run
    ckpt, new, base = pretrained
    argv = ["--config", os.path.join(ROOT, "configs", "finetune_digits.yaml"), "--data_dir", new,
            "--ckpt_save_dir", str(base / "restart"), "--ckpt_path", ckpt, *SMALL, *BUDGET]
    over = parse_overrides(argv)
    path = over.pop("config")
    run = Run(load_config(path, dict(over, prepbn_fraction="0.5")))
    run.start()
    iters = {int(c.iter.asnumpy()) for _, c in run.net.cells_and_names() if hasattr(c, "total_step")}
    assert iters == {run.schedule[0]} and run.schedule[0] == 3   # half of 2 epochs x 3 steps
    cfg = load_config(path, dict(over, model_kwargs="{embed_dim: 16, depths: [1, 1], "
                                                   "num_heads: [1, 2], attn_type: LL, window_size: 8}"))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_pretrained(build_model(cfg), read_ms_checkpoint(ckpt), what=ckpt)
    params = {k: v for k, v in read_ms_checkpoint(ckpt).items() if not k.startswith(("opt.", "ema.", "scaler.",
                                                                                       "meta."))}
    net = build_model(load_config(None, {"num_classes": "6", "model_kwargs": over["model_kwargs"],
                                         "image_resize": "32"}))
    assert load_pretrained(net, params, what=ckpt) == []   # same classes: everything loads, nothing re-initialised
    np.testing.assert_array_equal(net.head.weight.asnumpy(), params["head.weight"])

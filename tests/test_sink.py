"""Dataset sink mode gives the numbers of the per-step loop: per-step losses, the PRepBN counters
after every sink, the weights, a resumed run and two data-parallel replicas (CPU, quickstart
config at a tiny size). On CPU MindSpore has no device queue; the sunk graph (counters moved in
the forward, losses and finite flags kept on the device, accumulation in the graph) is the same."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from slab_ms.checkpoint import read_ms_checkpoint
from slab_ms.engine.config import load_config
from slab_ms.engine.schedule import prepbn_cells
from slab_ms.engine.sink import sink_plan
from slab_ms.engine.trainer import Run

from conftest import ROOT, kill_when_written, make_digits, run_two_workers

CONFIG = os.path.join(ROOT, "configs", "quickstart_digits.yaml")
TINY = {"model_kwargs": "{embed_dim: 16, depths: [1, 1], num_heads: [1, 2], attn_type: LS, window_size: 8}",
        "num_samples": "320", "log_interval": "5", "val_while_train": "false", "bn_recalibrate_epochs": "0"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("data") / "digits")
    make_digits.build(out, size=32)
    return out


def _counters(net):
    return [(int(c.warm.asnumpy()), int(c.iter.asnumpy())) for c in prepbn_cells(net)]


def _run(digits, out, sink, accumulation):
    """One epoch of the tiny quickstart run (``prepbn_fraction`` ends the mix inside it, after a
    warm-up), returning the run, its per-step losses and the counters seen at every optimizer step
    (per-step loop) or after every sink."""
    cfg = load_config(CONFIG, dict(TINY, data_dir=digits, ckpt_save_dir=str(out), epoch_size="1",
                                   dataset_sink_mode=str(sink).lower(), sink_size="4", prepbn_warm="2",
                                   prepbn_fraction="0.5", gradient_accumulation_steps=str(accumulation)))
    run = Run(cfg)
    run.start()
    seen = {}
    if sink:
        original = run.sink_loop.run

        def recording(batches, steps):
            out = original(batches, steps)
            seen[run.meta["step"] + steps] = _counters(run.net)
            return out
        run.sink_loop.run = recording
    else:
        original = run.stepper.step

        def recording(x, y):
            out = original(x, y)
            if out[1]:
                seen[run.meta["step"] + 1] = _counters(run.net)
            return out
        run.stepper.step = recording
    run.train_epoch(0)
    return run, [s["loss"] for s in run.history["steps"]], seen


@pytest.mark.parametrize("accumulation", [1, 2])
def test_sink_mode_gives_the_per_step_numbers(digits, tmp_path, accumulation):
    loop, loop_losses, loop_counters = _run(digits, tmp_path / "loop", False, accumulation)
    sunk, sink_losses, sink_counters = _run(digits, tmp_path / "sink", True, accumulation)
    steps = loop.steps_per_epoch
    assert steps >= 5 and len(sink_losses) == len(loop_losses) == steps
    np.testing.assert_allclose(sink_losses, loop_losses, rtol=1e-6, atol=0)
    # counters after every sink (4 steps, then the rest) equal the per-step loop's at that step
    ends = np.cumsum(sink_plan(0, steps, 4)).tolist()
    assert sorted(sink_counters) == ends and all(sink_counters[e] == loop_counters[e] for e in ends)
    assert loop_counters[2][0][0] == 0 and loop_counters[steps][0] == (0, 0)   # warm-up and the mix both ran
    for (name, p), (_, q) in zip(loop.net.parameters_and_names(), sunk.net.parameters_and_names()):
        a, b = p.asnumpy().astype(np.float64), q.asnumpy().astype(np.float64)
        assert np.abs(a - b).max() <= 1e-6 * max(1.0, np.abs(a).max()), name
    ema_a, ema_b = loop.stepper.ema_state(), sunk.stepper.ema_state()
    assert ema_a.keys() == ema_b.keys()
    assert sunk.history["steps"][3]["lambda"] is not None and sunk.history["steps"][2]["lambda"] is None


def test_sink_plan_ends_sinks_at_checkpoints():
    assert sink_plan(0, 10, 4) == [4, 4, 2]
    assert sink_plan(3, 12, 4, stops=[5, 10, 20]) == [2, 4, 1, 2]
    assert sink_plan(0, 3, 8) == [3]


def _train_cmd(digits, out, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG, "--data_dir", digits,
           "--ckpt_save_dir", str(out), "--model_kwargs", TINY["model_kwargs"], "--num_samples", "320",
           "--log_interval", "5", "--dataset_sink_mode", "true", "--sink_size", "4", *extra]


def test_sink_mode_resumes_a_killed_run_to_the_same_state(digits, tmp_path):
    args = ["--epoch_size", "2", "--prepbn_fraction", "0.6", "--bn_recalibrate_epochs", "0"]
    cmd = _train_cmd(digits, tmp_path / "full", *args)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    cut = tmp_path / "cut"
    cmd = _train_cmd(digits, cut, *args)
    kill_when_written(cmd, cut / "slab_swin_tiny-0001.ckpt", "epoch 1")
    assert not (cut / "final.ckpt").exists(), "the run finished before it was killed"
    p = subprocess.run(cmd + ["--resume", "auto"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in (cut / "train.log").read_text()
    a, b = read_ms_checkpoint(str(tmp_path / "full" / "final.ckpt")), read_ms_checkpoint(str(cut / "final.ckpt"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_two_workers_in_sink_mode_keep_identical_replicas(digits, tmp_path):
    summary = run_two_workers(CONFIG, tmp_path / "dp", "--data_dir", digits, "--model_kwargs", TINY["model_kwargs"],
                              "--num_samples", "160", "--epoch_size", "1", "--bn_recalibrate_epochs", "0",
                              "--dataset_sink_mode", "true", "--sink_size", "2")
    assert summary["world_size"] == 2 and summary["steps"] >= 2
    log = json.loads(open(tmp_path / "dp" / "history.json").read())
    assert all(s["finite"] for s in log["steps"])


def test_both_recalibration_modes_on_the_digits(digits, tmp_path):
    """mean: one un-augmented pass, the plain mean; upstream: augmented passes at momentum 0.1
    from the trained statistics. Both start from the same trained state."""
    cfg = load_config(CONFIG, dict(TINY, data_dir=digits, ckpt_save_dir=str(tmp_path), epoch_size="1",
                                   prepbn_fraction="0.5", bn_recalibrate_epochs="2"))
    run = Run(cfg)
    run.start()
    run.train_epoch(0)
    trained = {n: p.asnumpy().copy() for n, p in run.net.parameters_and_names()}
    calls = []
    original = run.train_loader

    def recording(epoch, **kw):
        calls.append(kw)
        return original(epoch, **kw)
    run.train_loader = recording
    stats = {}
    for mode in ("mean", "upstream"):
        for n, p in run.net.parameters_and_names():
            p.set_data(ms.Tensor(trained[n]))
        run.cfg.bn_recalibrate_mode = mode
        assert run.recalibrate() == 2 * run.steps_per_epoch
        stats[mode] = {n: p.asnumpy() for n, p in run.net.parameters_and_names() if n.endswith("moving_mean")}
    assert calls == [{"mixup": False, "augment": False}] * 2 + [{"mixup": False, "augment": True}] * 2
    for n, mean in stats["upstream"].items():   # upstream keeps 0.9 ** 20 of the trained statistics
        assert not np.allclose(mean, stats["mean"][n], rtol=1e-3), n
        assert not np.allclose(mean, trained[n], rtol=1e-3), n

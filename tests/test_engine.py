"""Trainer pieces in-process: config checking, PRepBN schedule in optimizer steps (with gradient
accumulation), one forward per micro-step, EMA without counters, BN recalibration."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

import slab_ms
from slab_ms.engine.config import ConfigError, load_config, parse_overrides
from slab_ms.engine.lm_trainer import build_lm
from slab_ms.engine.task import is_language_config
from slab_ms.engine.recalibrate import recalibrate_bn
from slab_ms.engine.schedule import apply_schedule, current_lambda, plan_schedule, prepbn_cells
from slab_ms.engine.state import collect_state
from slab_ms.engine.train_step import NetWithLoss, Stepper, make_loss_scaler
from slab_ms.engine.common import build_model, build_optimizer
from slab_ms.layers.prepbn import RepBN

from conftest import ROOT, SMALL_VARIANTS

TINY = {"model_kwargs": "{embed_dim: 16, depths: [1, 1], num_heads: [1, 2], attn_type: LS, window_size: 8}",
        "image_resize": "32", "num_classes": "4", "drop_path_rate": "0.0"}


def tiny_cfg(**extra):
    return load_config(None, dict(TINY, **{k: str(v) for k, v in extra.items()}))


# ----------------------------------------------------------------------------- configs
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_every_model_has_a_config():
    names = {load_config(p).model for p in CONFIGS}
    assert set(slab_ms.list_models()) <= names, f"no config for {sorted(set(slab_ms.list_models()) - names)}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_parses_and_builds(path):
    """Each config builds its model; the recipes are checked against upstream's cfgs, key by key,
    in test_recipes.py."""
    cfg = load_config(path)
    assert slab_ms.is_model(cfg.model), cfg.model
    if is_language_config(cfg):   # the LLaMA recipes: the schedule is upstream's counters exactly
        net = build_lm(cfg)
        cells = prepbn_cells(net)
        assert bool(cells) == (cfg.prepbn_steps is not None or cfg.prepbn_fraction is not None)
        if cells and cfg.prepbn_steps is not None:
            k = cfg.gradient_accumulation_steps
            assert cells[0].counters_for(cfg.prepbn_steps * k, cfg.prepbn_warm * k) == \
                (int(cells[0].total_step.asnumpy()), int(cells[0].warm.asnumpy()))
        return
    net = build_model(cfg)
    assert net.num_classes == cfg.num_classes
    if os.path.basename(path) not in ("quickstart_digits.yaml", "finetune_digits.yaml"):   # ImageNet recipes
        has_prepbn = bool(prepbn_cells(net))
        assert has_prepbn == (cfg.prepbn_steps is not None)
        if has_prepbn:   # the family's upstream total_step (SPEC section 2)
            assert cfg.prepbn_steps == int(prepbn_cells(net)[0].total_step.asnumpy())


def test_unknown_and_mistyped_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: slab_swin_tiny\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'.*"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(None, {"batch_szie": "8"})
    with pytest.raises(ConfigError, match="batch_size .*expected int"):
        load_config(None, {"batch_size": "eight"})
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    cfg = load_config(None, parse_overrides(["--lr", "1e-3", "--ema", "--scale=[0.5, 1.0]", "--num_samples", "none"]))
    assert (cfg.lr, cfg.ema, cfg.scale, cfg.num_samples) == (1e-3, True, [0.5, 1.0], None)


# ----------------------------------------------------------------------------- schedule
def _stepper(cfg, net, accumulation=1, ema_decay=None, steps=20):
    opt = build_optimizer(cfg, net, [1e-3] * steps)
    return Stepper(NetWithLoss(net, nn.CrossEntropyLoss()), opt, accumulation=accumulation,
                   loss_scale=make_loss_scaler(1.0), clip_value=5.0, ema_decay=ema_decay, network=net), opt


def _batch(seed, n=4):
    rng = np.random.default_rng(seed)
    return (ms.Tensor(rng.standard_normal((n, 3, 32, 32)).astype(np.float32)),
            ms.Tensor(rng.integers(0, 4, n).astype(np.int32)))


@pytest.mark.parametrize("accumulation", [1, 2])
def test_lambda_goes_from_one_to_zero_over_optimizer_steps(accumulation):
    cfg = tiny_cfg(prepbn_steps=3, gradient_accumulation_steps=accumulation)
    net = build_model(cfg)
    assert plan_schedule(cfg, net, total_opt_steps=5) == (3, 0)
    apply_schedule(net, 3, 0, accumulation)
    stepper, _ = _stepper(cfg, net, accumulation)
    cells = prepbn_cells(net)
    lams, micro = [current_lambda(net)], 0
    for _ in range(5):
        for _ in range(accumulation):
            loss, applied, finite = stepper.step(*_batch(micro))
            micro += 1
            # one forward per micro-step: every module's iter moved by exactly one (floored at 0)
            assert {int(c.iter.asnumpy()) for c in cells} == {max(0, 3 * accumulation - micro)}
        assert applied and finite and np.isfinite(loss)
        lams.append(current_lambda(net))
    assert lams == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0, 0.0, 0.0])


def test_schedule_must_end_before_the_run():
    net = build_model(tiny_cfg())
    with pytest.raises(ConfigError, match="ends after the run"):
        plan_schedule(tiny_cfg(prepbn_steps=10), net, total_opt_steps=9)
    with pytest.raises(ConfigError, match="ends after the run"):
        plan_schedule(tiny_cfg(prepbn_steps=8, prepbn_warm=2), net, total_opt_steps=9)
    with pytest.raises(ConfigError, match="ends after the run"):   # the model default, 60000 steps
        plan_schedule(tiny_cfg(), net, total_opt_steps=1000)
    assert plan_schedule(tiny_cfg(prepbn_fraction=0.5), net, total_opt_steps=9) == (4, 0)
    plain = build_model(tiny_cfg(model_kwargs="{embed_dim: 16, depths: [1, 1], num_heads: [1, 2], attn_type: LS, "
                                              "window_size: 8, norm: repbn}"))
    assert plan_schedule(tiny_cfg(), plain, total_opt_steps=9) is None
    with pytest.raises(ConfigError, match="has no PRepBN"):
        plan_schedule(tiny_cfg(prepbn_steps=3), plain, total_opt_steps=9)


def test_ema_averages_floats_and_never_the_counters():
    cfg = tiny_cfg(prepbn_steps=4)
    net = build_model(cfg)
    apply_schedule(net, 4, 0)
    stepper, opt = _stepper(cfg, net, ema_decay=0.5)
    before = {k: v.copy() for k, v in stepper.ema_state().items()}
    for s in range(3):
        stepper.step(*_batch(s))
    ema = stepper.ema_state()
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert ema and all(v.dtype == np.float32 for v in ema.values())
    assert not any(k.endswith(("warm", "iter", "total_step", "num_batches_tracked")) for k in ema)
    name = "head.weight"   # moved, and lags the weights: 0.5-decay average of the trajectory
    assert not np.allclose(ema[name], before[name]) and not np.allclose(ema[name], params[name])
    state = collect_state(net, opt, stepper, {"epoch": 1, "step": 3})
    assert int(state["layers.0.blocks.0.norm1.iter"]) == 1 and "ema.layers.0.blocks.0.norm1.iter" not in state


class OneRepBN(nn.Cell):
    """A RepBN over 6 channels, alone: the recalibration tests' network."""

    def __init__(self):
        super().__init__()
        self.norm = RepBN(6)

    def construct(self, x):
        return self.norm(x)


def test_recalibration_sets_the_mean_of_batch_statistics():
    net = OneRepBN()
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((3, 5, 6)).astype(np.float32) * (i + 1) + i for i in range(4)]
    n = recalibrate_bn(net, (ms.Tensor(b) for b in batches))
    flat = [b.reshape(-1, 6) for b in batches]
    assert n == 4
    np.testing.assert_allclose(net.norm.bn.moving_mean.asnumpy(), np.mean([f.mean(0) for f in flat], 0), rtol=1e-5)
    np.testing.assert_allclose(net.norm.bn.moving_variance.asnumpy(),
                               np.mean([f.var(0, ddof=1) for f in flat], 0), rtol=1e-5)
    assert int(net.norm.bn.num_batches_tracked.asnumpy()) == 4 and net.norm.bn.momentum == 0.1


def test_upstream_recalibration_is_bns_moving_average_from_the_trained_statistics():
    """bn_recalibrate_mode upstream: momentum 0.1 (PyTorch's convention) continued from the
    trained running statistics, checked against the formula in numpy."""
    net = OneRepBN()
    rng = np.random.default_rng(1)
    mean0, var0 = rng.standard_normal(6).astype(np.float32), rng.random(6).astype(np.float32) + 0.5
    net.norm.bn.moving_mean.set_data(ms.Tensor(mean0))
    net.norm.bn.moving_variance.set_data(ms.Tensor(var0))
    batches = [rng.standard_normal((3, 5, 6)).astype(np.float32) * (i + 1) + i for i in range(4)]
    n = recalibrate_bn(net, (ms.Tensor(b) for b in batches), momentum=0.1)
    mean, var = mean0.astype(np.float64), var0.astype(np.float64)
    for b in batches:
        f = b.reshape(-1, 6).astype(np.float64)
        mean, var = 0.9 * mean + 0.1 * f.mean(0), 0.9 * var + 0.1 * f.var(0, ddof=1)
    assert n == 4 and int(net.norm.bn.num_batches_tracked.asnumpy()) == 4 and net.norm.bn.momentum == 0.1
    np.testing.assert_allclose(net.norm.bn.moving_mean.asnumpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.norm.bn.moving_variance.asnumpy(), var, rtol=1e-5)
    assert not np.allclose(mean, np.mean([b.reshape(-1, 6).mean(0) for b in batches], 0), rtol=1e-2)


def test_recipe_note_says_where_the_schedule_ends_at_another_global_batch():
    """Upstream issue #6: prepbn_steps tied to 8 x 128; at 512 images per step the same steps are
    half the share of the run; at 2048 twice."""
    from slab_ms.engine.schedule import recipe_note
    cfg = load_config(os.path.join(ROOT, "configs", "slab_swin_t.yaml"))
    assert cfg.recipe_global_batch == 1024 and cfg.prepbn_steps == 60000
    assert recipe_note(cfg, 1251, 1024, 300 * 1251) is None
    note = recipe_note(cfg, 626, 2048, 300 * 626)
    assert "\n" not in note and "ends at optimizer step 60000 of 187800 (31.9%, epoch 95.8)" in note, note
    assert "set prepbn_fraction 0.1597 instead of prepbn_steps" in note and "16.0% of the run" in note
    assert "(8.0%" in recipe_note(cfg, 2502, 512, 300 * 2502)
    cfg.prepbn_steps, cfg.prepbn_fraction = None, 0.16
    assert recipe_note(cfg, 626, 2048, 300 * 626) is None


def test_jit_level_reaches_mindspores_context():
    from slab_ms.engine.common import jit_level_for
    assert jit_level_for(tiny_cfg(), "Ascend") == "O2" and jit_level_for(tiny_cfg(), "CPU") is None
    assert jit_level_for(tiny_cfg(mode=1), "Ascend") is None
    code = ("import mindspore as ms; from slab_ms.engine.common import setup_context; "
            "from slab_ms.engine.config import load_config; setup_context(load_config(None, {'jit_level': 'O1'})); "
            "print(ms.get_context('jit_config'))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "'jit_level': 'O1'" in p.stdout, p.stderr[-2000:]
    with pytest.raises(ConfigError, match="jit_level"):
        tiny_cfg(jit_level="O3")


def test_o2_cast_path_runs_on_cpu_with_norms_in_float32_and_loss_scaling():
    """amp_level O2 (auto on Ascend), as far as the CPU runs it: the norms stay float32, the rest
    computes in float16 over float32 weights, an overflowing scale skips the update and halves,
    a sane one trains and gives the float32 network's loss within float16 precision."""
    from slab_ms.engine.common import apply_amp
    cfg = tiny_cfg()
    ms.set_seed(3)
    ref = build_model(cfg)
    net = build_model(cfg)
    for (_, p), (_, q) in zip(ref.parameters_and_names(), net.parameters_and_names()):
        q.set_data(p.data.copy())
    apply_amp(net, "O2")
    flags = {}
    for _, cell in net.cells_and_names():
        f = cell.get_flags()
        flags.setdefault(type(cell).__name__, set()).add("fp32" if f.get("fp32") else "fp16" if f.get("fp16") else "-")
    for kind in ("PRepBN", "RepBN", "TokenBatchNorm", "LayerNorm"):
        assert flags[kind] == {"fp32"}, (kind, flags[kind])
    for kind in ("Dense", "Conv2d", "SimplifiedLinearAttention", "WindowAttention", "Mlp"):
        assert flags[kind] == {"fp16"}, (kind, flags[kind])
    assert {p.dtype for p in net.get_parameters()} == {ms.float32, ms.int64}
    x, y = _batch(0)
    net.set_train(False)
    assert net(x).dtype == ms.float16
    loss_fn = nn.CrossEntropyLoss()
    ref.set_train(True)   # the training forward the steps below make (batch statistics, same lambda)
    want = float(loss_fn(ref(x), y).asnumpy())
    overflow = Stepper(NetWithLoss(net, loss_fn), build_optimizer(cfg, net, [1e-3] * 20),
                       loss_scale=make_loss_scaler(2.0 ** 60, dynamic=True), network=net)
    w0 = net.head.weight.asnumpy().copy()
    for expected_scale in (2.0 ** 59, 2.0 ** 58):
        loss, applied, finite = overflow.step(x, y)
        assert not finite and float(overflow.loss_scale.scale_value.asnumpy()) == expected_scale
    np.testing.assert_array_equal(net.head.weight.asnumpy(), w0)
    sane = Stepper(NetWithLoss(net, loss_fn), build_optimizer(cfg, net, [1e-3] * 20),
                   loss_scale=make_loss_scaler(2.0 ** 10, dynamic=True), network=net)
    loss, applied, finite = sane.step(x, y)
    assert finite and abs(loss - want) <= 5e-3 * abs(want), (loss, want)
    assert not np.array_equal(net.head.weight.asnumpy(), w0)


def test_dynamic_loss_scale_skips_overflowing_steps():
    cfg = tiny_cfg(prepbn_steps=4)
    net = build_model(cfg)
    apply_schedule(net, 4, 0)
    opt = build_optimizer(cfg, net, [1e-3] * 10)
    scale = make_loss_scaler(2.0 ** 10, dynamic=True, window=2)   # mindspore.amp.DynamicLossScaler
    stepper = Stepper(NetWithLoss(net, nn.CrossEntropyLoss()), opt, loss_scale=scale, clip_value=5.0, network=net)
    x, y = _batch(0)
    stepper.step(x, y)
    stepper.step(x, y)   # two finite steps: the window is reached, the scale doubles
    assert float(scale.scale_value.asnumpy()) == 2.0 ** 11
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    bad = x.asnumpy().copy()
    bad[0, 0, 0, 0] = np.inf
    loss, applied, finite = stepper.step(ms.Tensor(bad), y)
    assert not finite and float(scale.scale_value.asnumpy()) == 2.0 ** 10   # halved, and the update skipped
    assert all(np.array_equal(before[p.name], p.asnumpy()) for p in net.trainable_params())


class _Tiny(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Dense(6, 5)
        self.fc2 = nn.Dense(5, 3)

    def construct(self, x):
        return self.fc2(ops.relu(self.fc1(x)))


@pytest.mark.parametrize("scale,dynamic,clip", [(1.0, False, None), (1.0, False, 0.05), (1.0, False, 100.0),
                                                (1024.0, False, 0.05), (256.0, True, 0.05), (256.0, True, None)])
def test_update_unscales_and_clips_like_the_formula(scale, dynamic, clip):
    """SGD(lr=1) after one step moves each weight by exactly ``-g * min(1, clip / ||g||)``, g the
    unscaled gradient: loss scaling leaves no trace and clipping binds to the global L2 norm."""
    net = _Tiny()
    x = ms.Tensor(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32))
    y = ms.Tensor(np.array([0, 2, 1, 2], np.int32))
    loss_net = NetWithLoss(net, nn.CrossEntropyLoss())
    params = net.trainable_params()
    grads = [g.asnumpy().astype(np.float64) for g in ms.grad(loss_net, None, params)(x, y)]
    before = [p.asnumpy().astype(np.float64) for p in params]
    norm = np.sqrt(sum((g * g).sum() for g in grads))
    coef = 1.0 if clip is None else min(1.0, clip / norm)
    stepper = Stepper(loss_net, nn.SGD(params, learning_rate=1.0), loss_scale=make_loss_scaler(scale, dynamic=dynamic),
                      clip_value=clip, network=net)
    _, applied, finite = stepper.step(x, y)
    assert applied and finite
    for p, w, g in zip(params, before, grads):
        np.testing.assert_allclose(p.asnumpy(), w - coef * g, rtol=1e-5, atol=1e-6, err_msg=p.name)


@pytest.mark.parametrize("name", ["slab_swin_tiny", "deit_tiny_prepbn", "slab_deit_tiny", "pvt_tiny_prepbn",
                                  "slab_pvt_tiny", "slab_cswin_tiny"])
def test_adamw_decays_only_weight_matrices(name):
    """mindcv's create_optimizer reads no_weight_decay(): biases, norms, alpha, position tables and
    tokens get no weight decay (SPEC section 6); every weight matrix and conv kernel does."""
    from mindcv.optim import create_optimizer
    net = slab_ms.create_model(name, **SMALL_VARIANTS[name])
    opt = create_optimizer(net, opt="adamw", lr=1e-3, weight_decay=0.05, weight_decay_filter="norm_and_bias")
    tables = ("pos_embed", "positional_encoding", "relative_position_bias_table", "cls_token")
    flags = {p.name: bool(f) for p, f in zip(opt._parameters, opt.decay_flags)}
    assert set(flags) == {p.name for p in net.trainable_params()}
    for pname, decayed in flags.items():
        expected = len(net.parameters_dict()[pname].shape) >= 2 and not any(t in pname for t in tables)
        assert decayed == expected, pname
    assert any(not d and any(t in n for t in tables) for n, d in flags.items())   # a table is exempt


@pytest.mark.parametrize("name", ["deit_tiny_prepbn", "slab_deit_tiny", "pvt_tiny_prepbn", "slab_pvt_tiny",
                                  "slab_cswin_tiny"])
def test_every_family_trains_in_graph_mode(name):
    """Three optimizer steps on one batch: the loss falls, every PRepBN counter moves once per
    step, and the weights stay finite (backward of DeiT, PVT and CSwin compiled in GRAPH_MODE)."""
    net = slab_ms.create_model(name, **dict(SMALL_VARIANTS[name], num_classes=4))
    cells = prepbn_cells(net)   # none in deit_tiny_prepbn (plain RepBN)
    if cells:
        apply_schedule(net, 100, 0)
    stepper, _ = _stepper(tiny_cfg(), net, steps=3)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((2, 3, 224, 224)).astype(np.float32))
    y = ms.Tensor(np.array([1, 3], np.int32))
    losses = [stepper.step(x, y)[0] for _ in range(3)]
    assert losses[-1] < losses[0], losses
    if cells:
        assert {int(c.iter.asnumpy()) for c in cells} == {97}
    assert all(np.isfinite(p.asnumpy()).all() for p in net.trainable_params())


def _twin_steppers(make_net, make_loss, opt_for, accumulation):
    """Two identical networks and steppers: PRepBN counters moved by the step (one graph per
    phase, the default) and inside the forward (upstream's)."""
    nets = [make_net(), make_net()]
    for p, q in zip(nets[0].get_parameters(), nets[1].get_parameters()):
        q.set_data(p.data.copy())
    steppers = [Stepper(make_loss(net), opt_for(net), accumulation=accumulation, loss_scale=make_loss_scaler(1.0),
                        clip_value=1.0, network=net, schedule=mode) for net, mode in zip(nets, ("step", "forward"))]
    assert steppers[0].schedule is not None and steppers[1].schedule is None
    return nets, steppers


def _assert_same_state(nets, steppers, what):
    for p, q in zip(nets[0].get_parameters(), nets[1].get_parameters()):
        np.testing.assert_array_equal(p.asnumpy(), q.asnumpy(), err_msg=f"{what}: {p.name}")
    for p, q in zip(steppers[0].optimizer.moments1, steppers[1].optimizer.moments1):
        np.testing.assert_array_equal(p.asnumpy(), q.asnumpy(), err_msg=f"{what}: {p.name}")


@pytest.mark.parametrize("accumulation", [1, 2])
def test_schedule_moved_by_the_step_equals_the_in_forward_schedule(accumulation):
    """Warm-up, the mix and its end: the per-phase graphs with counters moved by the Stepper give the
    parameters, BN statistics, counters, Adam moments and losses of upstream's in-forward counters,
    bit for bit (the reported loss to 1e-6), and a direct call of the network afterwards still moves
    its counters."""
    cfg = tiny_cfg(gradient_accumulation_steps=accumulation)

    def make_net():
        net = build_model(cfg)
        apply_schedule(net, 2, 1, accumulation)   # 1 warm-up + 2 optimizer steps of mix
        return net

    nets, steppers = _twin_steppers(make_net, lambda net: NetWithLoss(net, nn.CrossEntropyLoss()),
                                    lambda net: build_optimizer(cfg, net, [1e-2] * 6), accumulation)
    lams = []
    for micro in range(5 * accumulation):
        batch = _batch(micro)
        losses = [s.step(*batch)[0] for s in steppers]
        # the reported loss of an accumulating micro-step may differ in its last bits (two graphs
        # reduce it differently); everything the step leaves behind is equal bit for bit
        assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0), (micro, losses)
        _assert_same_state(nets, steppers, f"micro-step {micro}")
        lams.append(current_lambda(nets[0]))
    assert lams[accumulation - 1::accumulation] == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0])
    assert sorted(steppers[0]._forward_steps) == ["mix", "warm"]
    cells = prepbn_cells(nets[0])
    apply_schedule(nets[0], 4, 0)
    nets[0].set_train(True)
    nets[0](_batch(9)[0])   # a direct call keeps upstream's behaviour: the counters move
    assert {int(c.iter.asnumpy()) for c in cells} == {3}
    cells[0].iter.set_data(ms.Tensor(10, ms.int64))   # modules that differ: the in-forward schedule
    steppers[0].step(*_batch(10))
    assert [int(c.iter.asnumpy()) for c in cells] == [9] + [2] * (len(cells) - 1)
    assert "forward" in steppers[0]._forward_steps


def test_llama_schedule_moved_by_the_step_equals_the_in_forward_schedule():
    """The LLaMA PRepBN's 16-forward gating, from the middle of a period: warm-up, the mix, iter
    moving on the period, with the pad mask of the final norm; bit for bit as in the forward."""
    from slab_ms.lm.loss import CausalLMLoss
    from slab_ms.models.llama import LlamaPRepBN

    def make_net():
        net = slab_ms.create_model("slab_llama_mini")
        for c in prepbn_cells(net):
            c.set_schedule(3, 1)
            c.num_step.set_data(ms.Tensor(14, ms.int64))   # warm ends on the 3rd forward, iter moves on the 19th
        return net

    nets, steppers = _twin_steppers(make_net, CausalLMLoss,
                                    lambda net: nn.AdamWeightDecay(net.trainable_params(), 1e-2), 1)
    assert isinstance(prepbn_cells(nets[0])[0], LlamaPRepBN)
    rng = np.random.default_rng(0)
    vocab = nets[0].config["vocab_size"]
    for f in range(20):
        ids = ms.Tensor(rng.integers(0, vocab, (2, 8)).astype(np.int32))
        mask = ms.Tensor((np.arange(8)[None] < np.array([[8], [5]])).astype(np.int32))
        losses = [s.step(ids, mask)[0] for s in steppers]   # the reported loss to 1e-6, as above
        assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0), (f, losses)
        _assert_same_state(nets, steppers, f"forward {f}")
    c = prepbn_cells(nets[0])[0]
    assert (int(c.num_step.asnumpy()), int(c.warm.asnumpy()), int(c.iter.asnumpy())) == (2, 0, 2)
    assert sorted(steppers[0]._forward_steps) == ["mix", "warm"]

"""PRepBN schedule and SLA numerics, in GRAPH_MODE."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from conftest import GOLDEN_MINIS, rel_err
from slab_ms.layers import PRepBN, RepBN, SimplifiedLinearAttention
from slab_ms.layers.common import GELU, shared_graph_key


def counters(norm):
    return int(norm.warm.asnumpy()), int(norm.iter.asnumpy()), int(norm.total_step.asnumpy())


def tokens(seed=0, shape=(2, 16, 8)):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def test_counters_move_in_training_and_stay_put_in_eval():
    norm = PRepBN(8, total_step=5)
    x = tokens()
    norm.set_train(True)
    for expected in (4, 3, 2, 1, 0, 0):  # never below zero
        norm(x)
        assert counters(norm) == (0, expected, 5)
    norm.set_train(False)
    norm.set_schedule(5)
    for _ in range(3):
        norm(x)
    assert counters(norm) == (0, 5, 5)


def _repbn_batch_stats(x, alpha, gamma, beta, eps=1e-5):
    """RepBN(x) = BN(x) + alpha * x (SPEC section 1) in training, in float64 numpy: BN normalises
    each channel with the mean and biased variance over all B*N tokens of the batch."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean, var = flat.mean(0), flat.var(0)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta + alpha * x


def test_lambda_is_read_before_the_decrement():
    x = tokens()
    norm = PRepBN(8, total_step=2)
    rng = np.random.default_rng(3)   # RepBN parameters away from their (1, 1, 0) start
    alpha, gamma, beta = np.float32(0.7), (rng.random(8) + 0.5).astype(np.float32), rng.standard_normal(8)
    for p, v in ((norm.norm2.alpha, [alpha]), (norm.norm2.bn.gamma, gamma), (norm.norm2.bn.beta, beta)):
        p.set_data(Tensor(np.asarray(v, np.float32)))
    norm.set_train(True)
    ln = norm.norm1(x).asnumpy()  # LayerNorm is stateless
    out = norm(x).asnumpy()  # lam = 2/2 = 1 -> pure LayerNorm, though iter becomes 1
    np.testing.assert_allclose(out, ln, rtol=1e-6, atol=1e-6)
    assert norm.lam() == 0.5
    norm.set_schedule(2)
    norm(x)
    norm(x)  # now lam was 1/2
    out = norm(x).asnumpy()  # lam = 0: pure RepBN with batch statistics
    assert counters(norm)[1] == 0
    expected = _repbn_batch_stats(x.asnumpy(), alpha, gamma, beta.astype(np.float32))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=2e-6)   # measured 4.6e-7 off, at |out| <= 6.1


def test_warm_up_is_pure_layernorm_and_keeps_bn_statistics():
    x = tokens()
    norm = PRepBN(8, total_step=4)
    norm.set_schedule(4, warm=2)
    norm.set_train(True)
    mean0 = norm.norm2.bn.moving_mean.asnumpy().copy()
    for warm_left in (1, 0):
        out = norm(x).asnumpy()
        np.testing.assert_array_equal(out, norm.norm1(x).asnumpy())
        assert counters(norm) == (warm_left, 4, 4)
    np.testing.assert_array_equal(norm.norm2.bn.moving_mean.asnumpy(), mean0)
    assert int(norm.norm2.bn.num_batches_tracked.asnumpy()) == 0
    norm(x)  # first scheduled step: lam = 1, statistics now move
    assert counters(norm) == (0, 3, 4)
    assert int(norm.norm2.bn.num_batches_tracked.asnumpy()) == 1
    assert not np.array_equal(norm.norm2.bn.moving_mean.asnumpy(), mean0)


def test_repbn_eval_is_an_affine_map():
    """Lemma 4.1: eval RepBN(x) = a*x + b with a = gamma/sqrt(var+eps) + alpha."""
    rng = np.random.default_rng(0)
    norm = RepBN(8)
    for p, v in ((norm.alpha, [0.3]), (norm.bn.gamma, rng.random(8) + 0.5), (norm.bn.beta, rng.random(8)),
                 (norm.bn.moving_mean, rng.random(8)), (norm.bn.moving_variance, rng.random(8) + 0.5)):
        p.set_data(Tensor(np.asarray(v, np.float32)))
    norm.set_train(False)
    x = tokens()
    a, b = (t.asnumpy() for t in norm.affine())
    np.testing.assert_allclose(norm(x).asnumpy(), x.asnumpy() * a + b, rtol=1e-5, atol=1e-6)


def _sla_reference(x, net):
    """Plain numpy SLA from the formula of SPEC section 4."""
    b, n, c = x.shape
    h, d = net.num_heads, net.head_dim
    w = net.qkv.weight.asnumpy()
    qkv = x @ w.T + net.qkv.bias.asnumpy()
    q, k, v = qkv[..., :c], qkv[..., c:2 * c] + net.positional_encoding.asnumpy(), qkv[..., 2 * c:]
    q, k = np.maximum(q, 0), np.maximum(k, 0)
    split = lambda t: t.reshape(b, n, h, d).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    z = 1 / (q @ k.sum(2)[..., None] + 1e-6)
    out = (q @ k.transpose(0, 1, 3, 2)) @ v * z
    side = int(np.sqrt(n))
    wdw, bdw = net.dwc.weight.asnumpy()[:, 0], net.dwc.bias.asnumpy()
    vm = np.pad(v.reshape(b, h, side, side, d), ((0, 0), (0, 0), (2, 2), (2, 2), (0, 0)))
    conv = np.zeros((b, h, side, side, d), np.float64)
    for i in range(5):
        for j in range(5):
            conv += vm[:, :, i:i + side, j:j + side, :] * wdw[:, i, j]
    out = out + (conv + bdw).reshape(b, h, n, d)
    out = out.transpose(0, 2, 1, 3).reshape(b, n, c)
    return out @ net.proj.weight.asnumpy().T + net.proj.bias.asnumpy()


@pytest.mark.parametrize("n,kv_first", [(16, True), (4, False)])
def test_sla_matches_the_formula(n, kv_first):
    rng = np.random.default_rng(1)
    net = SimplifiedLinearAttention(8, n, 2)
    net.positional_encoding.set_data(Tensor(rng.standard_normal((1, n, 8)).astype(np.float32)))
    assert net.kv_first == kv_first  # N > d: k^T v first; N < d: q k^T first
    x = rng.standard_normal((3, n, 8)).astype(np.float32)
    assert rel_err(net(Tensor(x)).asnumpy(), _sla_reference(x.astype(np.float64), net)) <= 1e-5


def _seeded_sla(rng, dim=16, num_tokens=64, num_heads=2):
    """An SLA whose weights come from ``rng`` (MindSpore's own initialisation is not seeded here)."""
    net = SimplifiedLinearAttention(dim, num_tokens, num_heads)
    for p in net.get_parameters():
        scale = 1.0 / np.sqrt(p.shape[-1]) if p.ndim > 1 else 0.1
        p.set_data(Tensor((scale * rng.standard_normal(p.shape)).astype(np.float32)))
    return net


def test_sla_core_runs_in_float32_under_float16():
    """Dense and conv in float16 (AMP O2/O3 style), the core in float32: on an input whose
    normaliser ``relu(q) . sum_j relu(k_j)`` is far past float16's 65504 (while q, k, v are not),
    a float16 core overflows; the cell stays finite and on the float64 formula. On ordinary
    inputs it is within float16 rounding of the formula."""
    rng = np.random.default_rng(2)
    net = _seeded_sla(rng)
    small = rng.standard_normal((2, 64, 16)).astype(np.float32)
    large = 64 * small
    refs = [_sla_reference(x.astype(np.float64), net) for x in (small, large)]
    # the control: this input's core in float16 arithmetic (numpy) overflows in the normaliser
    c = 16
    qkv = (large.astype(np.float16) @ net.qkv.weight.asnumpy().astype(np.float16).T
           + net.qkv.bias.asnumpy().astype(np.float16))
    assert np.abs(qkv).max() < 1e3   # the projections themselves are well inside float16
    heads = lambda t: t.reshape(2, 64, 2, 8).transpose(0, 2, 1, 3)  # noqa: E731
    q16 = heads(np.maximum(qkv[..., :c], 0))
    k16 = heads(np.maximum(qkv[..., c:2 * c] + net.positional_encoding.asnumpy().astype(np.float16), 0))
    with np.errstate(over="ignore"):
        denom16 = q16 @ k16.sum(axis=2, dtype=np.float16)[..., None]
    assert denom16.dtype == np.float16 and np.isinf(denom16).mean() > 0.9   # 96% of the rows
    net.to_float(ms.float16)
    for x, ref in zip((small, large), refs):
        half = net(Tensor(x, ms.float16))
        assert half.dtype == ms.float16
        got = half.asnumpy().astype(np.float64)
        assert np.isfinite(got).all(), f"{1 - np.isfinite(got).mean():.0%} of the outputs are not finite"
        assert rel_err(got, ref) < 1.5e-3   # measured 8.0e-4 and 7.5e-4: float16 rounding of x, q, k, v


def test_gelu_eval_form_is_the_exact_gelu_to_float32_accuracy():
    import math
    gelu = GELU()
    gelu.set_train(False)
    xs = np.linspace(-12, 12, 240001).astype(np.float32)
    exact = xs.astype(np.float64) * 0.5 * (1.0 + np.vectorize(math.erf)(xs.astype(np.float64) / math.sqrt(2.0)))
    got = gelu(Tensor(xs)).asnumpy()
    assert np.abs(got - exact).max() <= 1e-6  # torch's own float32 GELU is 1.1e-6 off here
    big = np.array([20, 1e3, 1e4, 1e20, 3e38], np.float32)  # past the fit: saturates, no overflow NaN
    tails = gelu(Tensor(np.concatenate([big, -big]))).asnumpy()
    np.testing.assert_array_equal(tails, np.concatenate([big, np.zeros_like(big)]))
    gelu.set_train(True)   # the same function in training
    np.testing.assert_array_equal(gelu(Tensor(xs)).asnumpy(), got)


@pytest.mark.parametrize("dtype", [ms.float32, ms.float16])
def test_gelu_gradient_is_the_exact_one(dtype):
    """The written-out gradient is ``Phi(x) + x phi(x)`` (float64 reference), also through a graph."""
    import math
    xs = np.linspace(-12, 12, 24001).astype(np.float32)
    x64 = xs.astype(np.float64)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(x64 / math.sqrt(2.0)))
    exact = cdf + x64 * np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    weights = np.random.default_rng(0).standard_normal(xs.shape).astype(np.float32)

    class Weighted(nn.Cell):
        def __init__(self):
            super().__init__()
            self.gelu = GELU()

        def construct(self, x, w):
            return (self.gelu(x) * w).sum()
    net = Weighted()
    net.set_train(True)
    grad = ms.grad(net, 0)(Tensor(xs, dtype), Tensor(weights, dtype)).asnumpy().astype(np.float64)
    tol = 2e-6 if dtype == ms.float32 else 2e-2
    assert np.abs(grad - exact * weights.astype(np.float64)).max() <= tol * np.abs(weights).max()


# ------------------------------------------------------------------ shared graphs (issue 16)
def _deit_mini():
    import slab_ms
    model, overrides = GOLDEN_MINIS["slab_deit_mini"]
    return slab_ms.create_model(model, **overrides)


def test_same_argument_cells_share_one_graph_and_train_as_separate_ones(monkeypatch):
    """``shared_graph`` cells (PRepBN, SLA, Mlp, ...) built with the same arguments compile from one
    front-end graph; two GRAPH_MODE training steps give bit for bit the parameters, BN statistics
    and PRepBN counters of the same network compiled cell by cell (``SLAB_MS_SHARED_GRAPHS=0``)."""
    from mindspore.train.serialization import load_param_into_net
    from slab_ms.engine.train_step import NetWithLoss, Stepper, make_loss_scaler
    shared = _deit_mini()
    keys = [shared_graph_key(c) for _, c in shared.cells_and_names() if isinstance(c, PRepBN)]
    assert len(keys) == 5 and len(set(keys)) == 1 and keys[0].startswith("lazy_inline_PRepBN")
    monkeypatch.setenv("SLAB_MS_SHARED_GRAPHS", "0")
    separate = _deit_mini()
    monkeypatch.delenv("SLAB_MS_SHARED_GRAPHS")
    assert not any(shared_graph_key(c) for _, c in separate.cells_and_names())
    load_param_into_net(separate, {p.name: ms.Parameter(Tensor(p.asnumpy()), name=p.name)   # copies, not aliases
                                   for p in shared.get_parameters()}, strict_load=True)
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3, 224, 224)).astype(np.float32))
    y = Tensor(np.array([1, 7], np.int32))
    for net in (shared, separate):
        for norm in (c for _, c in net.cells_and_names() if isinstance(c, PRepBN)):
            norm.set_schedule(8)
        opt = nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-3)
        stepper = Stepper(NetWithLoss(net, nn.CrossEntropyLoss()), opt, loss_scale=make_loss_scaler(1.0),
                          clip_value=5.0, network=net)
        stepper.step(x, y)
        stepper.step(x, y)
    got = {p.name: p.asnumpy() for p in shared.get_parameters()}
    for p in separate.get_parameters():
        np.testing.assert_array_equal(got[p.name], p.asnumpy(), err_msg=p.name)
    iters = [int(v) for k, v in got.items() if k.endswith(".iter")]
    assert iters == [6] * 5   # every PRepBN moved twice, not one of them for all
    assert all(int(v) == 2 for k, v in got.items() if k.endswith("num_batches_tracked"))


# One mini per family, and the blocks where one width meets two token counts or masks: pvt's
# reduction norm, Swin's merging norm and masked attention, the detection Swin's.
SHARING_CASES = [(m, dict(kw, drop_path_rate=0.0), (1, 3, 224, 224)) for m, kw in GOLDEN_MINIS.values()] + [
    ("slab_swin_tiny_det", dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], drop_path_rate=0.0),
     (1, 3, 96, 128)),
    ("slab_llama_mini", dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=16), (1, 8)),
]


@pytest.mark.parametrize("model,overrides,shape", SHARING_CASES, ids=[c[0] for c in SHARING_CASES])
def test_cells_sharing_a_graph_see_one_input_signature(model, overrides, shape):
    """Cells that share a key are called with the same input shapes (or None) everywhere in the
    network: MindSpore 2.10 has compiled such a graph with one call's shapes for the other
    (``graph_site``). A PyNative training forward records what every shared cell receives."""
    import slab_ms
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = slab_ms.create_model(model, **overrides)
    seen, sites = {}, {}
    for name, cell in net.cells_and_names():
        key = shared_graph_key(cell)
        if key:
            def record(c, args, key=key, name=name):
                sig = tuple(tuple(a.shape) if isinstance(a, Tensor) else repr(a) for a in args)
                seen.setdefault(key, set()).add(sig)
                sites.setdefault(key, set()).add(name)
            cell.register_forward_pre_hook(record)
    net.set_train(True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 64, shape, dtype=np.int32) if len(shape) == 2 else rng.standard_normal(shape).astype(np.float32)
    net(Tensor(x))
    assert seen, "no shared cell was called"
    mixed = {sorted(sites[k])[0]: sorted(v) for k, v in seen.items() if len(v) > 1}
    assert not mixed, mixed


def test_cells_with_dropout_keep_their_own_graph_and_masks():
    """Instances sharing a graph would share its random seed: two identical Mlps with dropout
    must still draw different masks in GRAPH_MODE."""
    from slab_ms.layers.common import Mlp
    assert shared_graph_key(Mlp(8, 8)) == shared_graph_key(Mlp(8, 8)) is not None

    class Two(nn.Cell):
        def __init__(self):
            super().__init__()
            self.a, self.b = Mlp(8, 16, drop=0.5), Mlp(8, 16, drop=0.5)
            for pa, pb in zip(self.a.get_parameters(), self.b.get_parameters()):
                pb.set_data(pa.data.copy())

        def construct(self, x):
            return self.a(x), self.b(x)
    net = Two()
    assert shared_graph_key(net.a) != shared_graph_key(net.b)
    net.set_train(True)
    a, b = net(tokens(shape=(4, 32, 8)))
    assert not np.array_equal(a.asnumpy(), b.asnumpy())
    net.set_train(False)
    a, b = net(tokens(shape=(4, 32, 8)))
    np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())

"""PRepBN LLaMA: the paper's language-model experiment (SLAB section 5.3, SPEC section 8).

Upstream is ``llama/modeling/llama-350M/modeling_llama.py`` of xinghaochen/SLAB, a modified
transformers 4.29 ``LlamaForCausalLM`` whose every RMSNorm is a LLaMA variant of PRepBN
(upstream ``LinearNorm``: ``norm1`` = RMSNorm, ``norm2`` = RepBN). The facts this file mirrors
are in ``shared/reference/llama/README.md``; where the LLaMA variant differs from the vision
PRepBN (``slab_ms.layers.prepbn``) the difference lives in one class here:

- :class:`LlamaPRepBN`: a fourth counter ``num_step``; ``warm``/``iter`` move only on training
  forwards with ``num_step % 16 == 0``, then ``num_step`` wraps modulo 16; eps = ``rms_norm_eps``
  for both halves; the final norm's BN statistics cover unpadded tokens only.
- :class:`LlamaRepBN`: starts at zero (alpha 0, BN weight 0, BN bias 0) and takes a pad mask.
- :class:`LlamaTokenBatchNorm`: masked batch statistics, float32 arithmetic for half-precision
  parameters.

Cells are registered in the order of the PyTorch modules and parameters keep the Hugging Face
names (``model.layers.0.self_attn.q_proj.weight``, ...; BatchNorm suffixes differ as everywhere
in slab_ms), so the converter is the shared name table. ``rotary_emb.inv_freq`` is a frozen
parameter: it travels bit for bit and the converter checks it against :func:`rotary_inv_freq`.

``norm`` picks the norm of every position: ``'prepbn'`` (upstream), ``'repbn'`` (RepBN alone)
or ``'rmsnorm'`` (the plain LLaMA baseline, HF layout ``input_layernorm.weight``). ``folded``
says which norms were folded into linear maps: ``'none'``, ``'layers'`` (upstream's
``merge_bn``: q/k/v and gate/up carry biases, ``model.norm`` stays) or ``'all'`` (also
``model.norm`` folded into ``lm_head``, which then has a bias; :func:`slab_ms.reparameterize`
produces it). ``dtype`` ``'float16'``/``'bfloat16'`` casts every float parameter (as HF's
``.half()``); norms, the attention softmax and the rotary tables still compute in float32.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common import initializer as init

from ..errors import CheckpointError, ConfigError
from ..layers.common import no_weight_decay_names, shared_graph
from ..layers.prepbn import PRepBN, RepBN, TokenBatchNorm
from ..layers.reparam import fold_norm, is_foldable
from .registry import build_registered, overrides_from_defaults, register_inferer, register_language_model

MASK_MIN = float(np.finfo(np.float32).min)   # HF's additive mask value (finfo.min), also the clamp
PHASE = 16                                   # upstream LinearNorm moves its counters every 16th forward
DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}
NORMS = ("prepbn", "repbn", "rmsnorm")
FOLDED = ("none", "layers", "all")


def rotary_inv_freq(head_dim, theta=10000.0):
    """``1 / theta ** (arange(0, d, 2) / d)`` in float32 operations, as HF's LlamaRotaryEmbedding.

    (torch's vectorised float32 ``pow`` may differ from numpy's by one ulp for d >= 64, which is why
    the converter compares a checkpoint's ``inv_freq`` to this with a tolerance and keeps the file's.)
    """
    exponent = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)


def _cast_float_params(cell, dtype):
    for _, p in cell.parameters_and_names():
        if p.dtype in (ms.float32, ms.float16, ms.bfloat16) and p.dtype != dtype:
            p.set_dtype(dtype)


# ----------------------------------------------------------------------------------------- norms
class RMSNorm(nn.Cell):
    """LLaMA RMSNorm (HF 4.29): mean of squares in float32, ``x * rsqrt(ms + eps)``, cast to the
    weight's dtype, times ``weight``. ``pad_mask`` is accepted (and ignored) so every norm of the
    model has one signature."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(Tensor(np.ones(dim, np.float32)), name="weight")

    def construct(self, x, pad_mask=None):
        xf = x.astype(ms.float32)
        variance = (xf * xf).mean(axis=-1, keep_dims=True)
        y = (xf * ops.rsqrt(variance + self.eps)).astype(self.weight.dtype)
        return (self.weight * y).astype(x.dtype)


class LlamaTokenBatchNorm(TokenBatchNorm):
    """:class:`TokenBatchNorm` over (B*T, C) tokens with an optional pad mask (upstream's RepBN
    with ``pad_mask``): in training the batch statistics (and the running-statistics update,
    momentum 0.1, unbiased variance) use only tokens with mask 1, and padded tokens pass through
    unchanged. Arithmetic is float32 whatever the parameters' dtype, in the ``x * a + b`` form of
    torch's CPU batch norm (``a = weight * invstd``, ``b = bias - mean * a``)."""

    def _f32(self):
        return (self.gamma.astype(ms.float32), self.beta.astype(ms.float32),
                self.moving_mean.astype(ms.float32), self.moving_variance.astype(ms.float32))

    def affine(self):
        gamma, beta, mean, var = self._f32()
        scale = gamma * ops.rsqrt(var + self.eps)
        return scale, beta - mean * scale

    def construct(self, x, update_stats=None, mask=None):
        if not self.training:
            scale, shift = self.affine()
            return (x.astype(ms.float32) * scale + shift).astype(x.dtype)
        if mask is None and self.gamma.dtype == ms.float32:
            # the decoder layers' norms (no mask) of a float32 model: the vision cell's fused
            # BatchNorm (one op each way, torch's update rule in place); the training step's norm
            # share fell from 14% of op time (written out: ~20 small ops per norm)
            return TokenBatchNorm.construct(self, x, update_stats)
        gamma, beta, _, _ = self._f32()
        xf = x.astype(ms.float32).reshape(-1, self.num_features)
        if mask is None:
            mean, var, factor = self._batch_stats(xf)
        else:
            mean, var, factor = self._masked_stats(xf, mask.reshape(-1, 1).astype(ms.float32))
        scale = gamma * ops.rsqrt(var + self.eps)
        y = xf * scale + (beta - mean * scale)
        if mask is not None:
            y = ops.where(mask.reshape(-1, 1) > 0, y, xf)
        self._update_masked_stats(ops.stop_gradient(mean), ops.stop_gradient(var * factor), update_stats)
        return y.reshape(x.shape).astype(x.dtype)

    def _batch_stats(self, xf):
        n = xf.shape[0]
        mean = xf.mean(axis=0)
        centered = xf - mean
        return mean, (centered * centered).mean(axis=0), n / max(n - 1, 1)

    def _masked_stats(self, xf, m):
        n = ops.maximum(m.sum(), 1.0)
        mean = (xf * m).sum(axis=0) / n
        centered = xf - mean
        return mean, (centered * centered * m).sum(axis=0) / n, n / ops.maximum(n - 1.0, 1.0)

    def _update_masked_stats(self, mean, unbiased_var, update):
        m = self.momentum
        old_mean, old_var = self.moving_mean.astype(ms.float32), self.moving_variance.astype(ms.float32)
        new_mean = (1.0 - m) * old_mean + m * mean
        new_var = (1.0 - m) * old_var + m * unbiased_var
        step = ops.ones_like(self.num_batches_tracked)
        if update is not None:
            new_mean = ops.select(ops.broadcast_to(update, new_mean.shape), new_mean, old_mean)
            new_var = ops.select(ops.broadcast_to(update, new_var.shape), new_var, old_var)
            step = ops.select(update, step, ops.zeros_like(step))
        ops.assign(self.moving_mean, new_mean.astype(self.moving_mean.dtype))
        ops.assign(self.moving_variance, new_var.astype(self.moving_variance.dtype))
        ops.assign(self.num_batches_tracked, self.num_batches_tracked + step)


class LlamaRepBN(RepBN):
    """Upstream's LLaMA RepBN: ``BN(x) + alpha * x``, zero-initialised (alpha 0, BN weight 0 and
    bias 0: an untrained RepBN outputs 0), BN eps = ``rms_norm_eps``, optional pad mask (used only
    in training: padded tokens come out as ``(1 + alpha) * x``)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__(dim, eps=eps)
        self.alpha.set_data(Tensor(np.zeros(1, np.float32)))
        self.bn = LlamaTokenBatchNorm(dim, eps=eps)
        self.bn.gamma.set_data(Tensor(np.zeros(dim, np.float32)))

    def construct(self, x, pad_mask=None, update_stats=None):
        y = self.bn(x, update_stats, pad_mask)
        return (y.astype(ms.float32) + self.alpha.astype(ms.float32) * x.astype(ms.float32)).astype(x.dtype)


class LlamaPRepBN(PRepBN):
    """Upstream's LLaMA ``LinearNorm(norm1=RMSNorm, norm2=RepBN)``: the vision :class:`PRepBN`
    with a ``num_step`` counter.

    Training: if ``warm > 0`` the output is ``norm1(x)`` (BN statistics untouched) and ``warm`` drops
    by one when ``num_step % 16 == 0`` (tested before the decrement). Otherwise
    ``lam = r0 * iter / total_step`` (float32, read before any decrement), the output is
    ``lam * norm1(x) + (1 - lam) * norm2(x, pad_mask)``, and ``iter`` drops by one when
    ``iter > 0`` and ``num_step % 16 == 0``. Then ``num_step = (num_step + 1) % 16``. Eval:
    ``norm2(x)`` with running statistics, every token normalised.

    Counters are non-trainable int64 parameters updated in ``construct`` without data-dependent
    control flow (``select``), so the cell compiles in GRAPH_MODE. ``schedule_mode`` "warm"/"mix"
    as in :class:`PRepBN`: the trainer moves the counters (:meth:`counters_after_forward`).
    """

    counted_phases = False   # sink mode keeps the in-forward schedule (the 16-forward gating)

    def __init__(self, dim, eps=1e-6, warm=10000, total_step=18000, r0=1.0):
        nn.Cell.__init__(self)   # own counters, in upstream's buffer order
        self.num_step = Parameter(Tensor(0, ms.int64), name="num_step", requires_grad=False)
        self.warm = Parameter(Tensor(warm, ms.int64), name="warm", requires_grad=False)
        self.iter = Parameter(Tensor(total_step, ms.int64), name="iter", requires_grad=False)
        self.total_step = Parameter(Tensor(total_step, ms.int64), name="total_step", requires_grad=False)
        self.r0 = r0
        self.norm1 = RMSNorm(dim, eps)
        self.norm2 = LlamaRepBN(dim, eps)

    def set_schedule(self, total_step, warm=0):
        super().set_schedule(total_step, warm)
        self.num_step.set_data(Tensor(0, ms.int64))

    @staticmethod
    def counters_for(forwards, warm_forwards):
        """The counters move once per 16 training forwards (upstream's ``num_step % 16``, one
        optimizer step of upstream's 16-step accumulation), so a plan in forwards becomes
        ``ceil(forwards / 16)`` periods (and the same for the warm-up)."""
        return -(-int(forwards) // PHASE), -(-int(warm_forwards) // PHASE)

    @staticmethod
    def forwards_to_finish(total_step, warm):
        """From a restart (``num_step`` 0): ``warm`` decrements on forwards 0, 16, ..., so the
        warm-up covers forwards ``0 .. 16 (warm - 1)``; ``iter`` then drops on forwards
        ``16 warm, ..., 16 (warm + total_step - 1)`` and lambda is 0 from the forward after."""
        total_step, warm = int(total_step), int(warm)
        if total_step == 0:
            return PHASE * (warm - 1) + 1 if warm else 0
        return PHASE * (warm + total_step - 1) + 1

    counter_names = ("num_step", "warm", "iter")

    @staticmethod
    def counters_after_forward(num_step, warm, it):
        """``(num_step, warm, iter)`` as Python ints after one training forward (see the class)."""
        on_phase = num_step % PHASE == 0
        if on_phase and warm > 0:
            warm -= 1
        elif on_phase and it > 0 and warm <= 0:
            it -= 1
        return (num_step + 1) % PHASE, warm, it

    @staticmethod
    def _mix(x1, x2, lam):
        """``lam * x1 + (1 - lam) * x2`` with ``1 - lam`` taken in float32 (upstream's order)."""
        return lam.astype(x1.dtype) * x1 + (1.0 - lam).astype(x1.dtype) * x2

    def construct(self, x, pad_mask=None):
        if not self.training:
            return self.norm2(x)
        if self.schedule_mode == "warm":
            return self.norm1(x)
        if self.schedule_mode == "mix":
            x1 = self.norm1(x)
            return self._mix(x1, self.norm2(x, pad_mask, None), self._scheduled_lam(self.iter))
        num_step, warm, it = self.num_step, self.warm, self.iter
        on_phase = (num_step % PHASE) == 0
        in_warm = warm > 0
        lam = self._scheduled_lam(it)
        zero, one = ops.zeros_like(warm), ops.ones_like(warm)
        ops.assign(self.warm, warm - ops.select(ops.logical_and(in_warm, on_phase), one, zero))
        dec_iter = ops.logical_and(ops.logical_and(ops.logical_not(in_warm), it > 0), on_phase)
        ops.assign(self.iter, it - ops.select(dec_iter, one, zero))
        ops.assign(self.num_step, (num_step + 1) % PHASE)
        x1 = self.norm1(x)
        x2 = self.norm2(x, pad_mask, ops.logical_not(in_warm))
        return ops.where(in_warm, x1, self._mix(x1, x2, lam))


class FoldedNorm(nn.Cell):
    """The identity left where a norm was folded into the next linear map (takes the pad mask)."""

    def construct(self, x, pad_mask=None):
        return x


def build_llama_norm(kind, dim, eps, warm, total_step, r0):
    if kind == "prepbn":
        return LlamaPRepBN(dim, eps, warm=warm, total_step=total_step, r0=r0)
    if kind == "repbn":
        return LlamaRepBN(dim, eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    raise ConfigError(f"unknown LLaMA norm {kind!r}; expected one of {', '.join(NORMS)}")


# ------------------------------------------------------------------------------------ attention
class LlamaEmbedding(nn.Cell):
    """Token embedding with HF's parameter name ``weight`` (``nn.Embedding`` calls it ``embedding_table``)."""

    def __init__(self, vocab_size, dim, padding_idx=None, std=0.02):
        super().__init__()
        self.weight = Parameter(init.initializer(init.Normal(std), (vocab_size, dim), ms.float32), name="weight")
        self.padding_idx = padding_idx

    def zero_padding_row(self):
        if self.padding_idx is not None:
            w = self.weight.asnumpy()
            w[self.padding_idx] = 0
            self.weight.set_data(Tensor(w, self.weight.dtype))

    def construct(self, input_ids):
        return ops.gather(self.weight, input_ids, 0)


class RotaryEmbedding(nn.Cell):
    """HF 4.29 rotary embedding: ``freqs = position * inv_freq`` (float32), ``emb = cat(freqs,
    freqs)``, returns ``(cos(emb), sin(emb))`` in float32 for the given position ids.

    ``inv_freq`` is the state-dict buffer, a frozen parameter here. Tables are computed from it
    per call (HF caches them up to max_position_embeddings; the values are the same). In a half
    precision model the saved ``inv_freq`` is half too, and upstream's tables still come from the
    float32 values computed at construction: so are ours (``_inv_freq_f32``)."""

    def __init__(self, head_dim, theta=10000.0):
        super().__init__()
        inv_freq = rotary_inv_freq(head_dim, theta)
        self.inv_freq = Parameter(Tensor(inv_freq), name="inv_freq", requires_grad=False)
        self._inv_freq_f32 = Tensor(inv_freq)
        self.use_saved = True

    def construct(self, position_ids):
        inv_freq = self.inv_freq.astype(ms.float32) if self.use_saved else self._inv_freq_f32
        freqs = position_ids.astype(ms.float32).expand_dims(-1) * inv_freq
        emb = ops.concat((freqs, freqs), axis=-1)
        return ops.cos(emb), ops.sin(emb)


def rotate_half(x):
    half = x.shape[-1] // 2
    return ops.concat((-x[..., half:], x[..., :half]), axis=-1)


class LlamaAttention(nn.Cell):
    """Causal multi-head attention with rotary positions (HF 4.29 LlamaAttention).

    ``scores = q k^T / sqrt(head_dim) + bias`` (see :func:`attention_bias`), softmax in float32. With
    ``k_cache``/``v_cache`` (frozen (B, H, S, D) parameters of a generation runner) the new keys
    and values are scattered in place into the slots ``cache_index`` and attention reads the
    whole fixed-length cache; ``bias`` then masks unwritten and future slots.
    """

    def __init__(self, hidden_size, num_heads, theta=10000.0, qkv_bias=False, std=0.02):
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.hidden_size = hidden_size
        self.norm_factor = math.sqrt(self.head_dim)
        def dense(bias):
            return nn.Dense(hidden_size, hidden_size, weight_init=init.Normal(std), has_bias=bias)
        self.q_proj, self.k_proj, self.v_proj = dense(qkv_bias), dense(qkv_bias), dense(qkv_bias)
        self.o_proj = dense(False)
        self.rotary_emb = RotaryEmbedding(self.head_dim, theta)
        self.scatter = ops.ScatterNdUpdate()
        self.qk = ops.BatchMatMul(transpose_b=True)

    def _heads(self, x, b, t):
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, x, position_ids, bias, k_cache=None, v_cache=None, cache_index=None):
        b, t, _ = x.shape
        q = self._heads(self.q_proj(x), b, t)
        k = self._heads(self.k_proj(x), b, t)
        v = self._heads(self.v_proj(x), b, t)
        cos, sin = self.rotary_emb(position_ids)
        cos = cos.astype(q.dtype).expand_dims(1)
        sin = sin.astype(q.dtype).expand_dims(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if k_cache is not None:
            self.scatter(k_cache, cache_index, k)
            self.scatter(v_cache, cache_index, v)
            k, v = k_cache, v_cache
        scores = (self.qk(q, k) / self.norm_factor).astype(ms.float32) + bias   # masked: exactly finfo.min
        probs = ops.softmax(scores, axis=-1).astype(v.dtype)
        out = ops.matmul(probs, v).transpose(0, 2, 1, 3).reshape(b, t, self.hidden_size)
        return self.o_proj(out)


class LlamaMLP(nn.Cell):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``; HF's module order gate, down, up."""

    def __init__(self, hidden_size, intermediate_size, bias=False, std=0.02):
        super().__init__()
        self.gate_proj = nn.Dense(hidden_size, intermediate_size, weight_init=init.Normal(std), has_bias=bias)
        self.down_proj = nn.Dense(intermediate_size, hidden_size, weight_init=init.Normal(std), has_bias=False)
        self.up_proj = nn.Dense(hidden_size, intermediate_size, weight_init=init.Normal(std), has_bias=bias)

    def construct(self, x):
        return self.down_proj(ops.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Cell):
    """Pre-norm block: ``x + attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``.
    The norms are called without the pad mask, as upstream's (its masked calls are commented out)."""

    @shared_graph   # every layer of a model is built alike: one front-end graph for all of them
    def __init__(self, cfg, folded):
        super().__init__()
        h = cfg["hidden_size"]
        self.self_attn = LlamaAttention(h, cfg["num_attention_heads"], cfg["rope_theta"], qkv_bias=folded)
        self.mlp = LlamaMLP(h, cfg["intermediate_size"], bias=folded)
        if folded:
            self.input_layernorm, self.post_attention_layernorm = FoldedNorm(), FoldedNorm()
        else:
            self.input_layernorm = build_llama_norm(cfg["norm"], h, cfg["rms_norm_eps"], cfg["warm"],
                                                    cfg["total_step"], cfg["r0"])
            self.post_attention_layernorm = build_llama_norm(cfg["norm"], h, cfg["rms_norm_eps"], cfg["warm"],
                                                             cfg["total_step"], cfg["r0"])

    def reparameterize(self):
        """Upstream's ``merge_bn``: the input norm into q/k/v, the post-attention norm into gate/up."""
        if is_foldable(self.input_layernorm):
            for name in ("q_proj", "k_proj", "v_proj"):
                setattr(self.self_attn, name, fold_dense(self.input_layernorm, getattr(self.self_attn, name)))
            self.input_layernorm = FoldedNorm()
        if is_foldable(self.post_attention_layernorm):
            for name in ("gate_proj", "up_proj"):
                setattr(self.mlp, name, fold_dense(self.post_attention_layernorm, getattr(self.mlp, name)))
            self.post_attention_layernorm = FoldedNorm()

    def construct(self, x, position_ids, bias, k_cache=None, v_cache=None, cache_index=None):
        x = x + self.self_attn(self.input_layernorm(x), position_ids, bias, k_cache, v_cache, cache_index)
        return x + self.mlp(self.post_attention_layernorm(x))


def fold_dense(norm, dense):
    """:func:`slab_ms.layers.reparam.fold_norm` (Lemma 4.1, computed in float64) keeping the
    layer's dtype: a half-precision Dense stays half precision (upstream's merge_bn does not)."""
    dtype = dense.weight.dtype
    new = fold_norm(norm, dense, "before")
    for p in (new.weight, new.bias):
        if p.dtype != dtype:
            p.set_dtype(dtype)
    return new


def attention_bias(attention_mask, t):
    """HF 4.29's additive attention mask as (B or 1, 1, T, T) float32: 0 where a key is visible
    (causal and not padded), finfo.min elsewhere.

    HF adds a causal and a padding mask of finfo.min each (-inf where both apply) and clamps the
    scores at finfo.min after adding them; every masked score is then exactly finfo.min (a score
    is far below finfo.min's ulp), so a query whose keys are all masked (a left-padded position)
    attends uniformly to all T keys. A single finfo.min per masked key gives the same scores.
    """
    rows = ops.arange(t, dtype=ms.int32).reshape(1, 1, t, 1)
    cols = ops.arange(t, dtype=ms.int32).reshape(1, 1, 1, t)
    visible = cols <= rows
    if attention_mask is not None:
        visible = ops.logical_and(visible, (attention_mask > 0).reshape(attention_mask.shape[0], 1, 1, t))
    return ops.where(visible, 0.0, MASK_MIN).astype(ms.float32)


class LlamaModel(nn.Cell):
    """Embedding, decoder layers and the final norm (which alone receives the pad mask)."""

    def __init__(self, cfg, folded):
        super().__init__()
        self.padding_idx = cfg["pad_token_id"]
        self.vocab_size = cfg["vocab_size"]
        self.embed_tokens = LlamaEmbedding(cfg["vocab_size"], cfg["hidden_size"], padding_idx=self.padding_idx)
        self.layers = nn.CellList([LlamaDecoderLayer(cfg, folded in ("layers", "all"))
                                   for _ in range(cfg["num_hidden_layers"])])
        if folded == "all":
            self.norm = FoldedNorm()
        else:
            self.norm = build_llama_norm(cfg["norm"], cfg["hidden_size"], cfg["rms_norm_eps"], cfg["warm"],
                                         cfg["total_step"], cfg["r0"])

    def construct(self, input_ids, attention_mask=None, position_ids=None):
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = ops.broadcast_to(ops.arange(t, dtype=ms.int32).reshape(1, t), (b, t))
        bias = attention_bias(attention_mask, t)
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, position_ids, bias)
        return self.norm(h, attention_mask)


class LlamaForCausalLM(nn.Cell):
    """Decoder-only LLaMA with an untied ``lm_head``; ``construct(input_ids, attention_mask=None,
    position_ids=None)`` returns the logits (B, T, vocab). Position ids default to ``0..T-1`` (as
    HF's forward); generation passes ``cumsum(attention_mask) - 1``."""

    def __init__(self, vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=18,
                 num_attention_heads=8, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2, norm="prepbn", warm=10000, total_step=18000,
                 r0=1.0, folded="none", dtype="float32"):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown LLaMA norm {norm!r}; expected one of {', '.join(NORMS)}")
        if folded not in FOLDED:
            raise ConfigError(f"folded must be one of {', '.join(FOLDED)}, got {folded!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if folded != "none" and norm == "rmsnorm":
            raise ConfigError("an RMSNorm model has nothing to fold (folded must be 'none')")
        self.config = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                           num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                           max_position_embeddings=max_position_embeddings, rms_norm_eps=rms_norm_eps,
                           rope_theta=rope_theta, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                           eos_token_id=eos_token_id, norm=norm, warm=warm, total_step=total_step, r0=r0,
                           folded=folded, dtype=dtype)
        self.model = LlamaModel(self.config, folded)
        self.lm_head = nn.Dense(hidden_size, vocab_size, weight_init=init.Normal(0.02), has_bias=folded == "all")
        if not self.model.embed_tokens.weight.has_init:
            self.model.embed_tokens.zero_padding_row()
        self.set_dtype(dtype)

    @property
    def num_layers(self):
        return len(self.model.layers)

    def no_weight_decay(self):
        """The usual LLaMA recipe: no weight decay on norms (every 1-D parameter: norm weights, BN
        affines, RepBN alpha, folded biases) nor on the token embedding (mindcv's hook)."""
        return no_weight_decay_names(self, ("embed_tokens",))

    def set_dtype(self, dtype):
        """Cast every float parameter to ``dtype`` ('float32', 'float16', 'bfloat16'), counters stay int64."""
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if dtype != "float32":
            _cast_float_params(self, DTYPES[dtype])
        for _, cell in self.cells_and_names():
            if isinstance(cell, RotaryEmbedding):
                cell.use_saved = dtype == "float32"
        self.config["dtype"] = dtype
        return self

    def reparameterize(self):
        """Fold ``model.norm`` (eval form, an affine map) into ``lm_head``: exact, and not done by
        upstream's merge_bn. The decoder layers fold themselves first (children before parents)."""
        if is_foldable(self.model.norm):
            self.lm_head = fold_dense(self.model.norm, self.lm_head)
            self.model.norm = FoldedNorm()
        layers_done = all(isinstance(layer.input_layernorm, FoldedNorm) for layer in self.model.layers)
        if layers_done:
            self.config["folded"] = "all" if isinstance(self.model.norm, FoldedNorm) else "layers"

    def construct(self, input_ids, attention_mask=None, position_ids=None):
        return self.lm_head(self.model(input_ids, attention_mask, position_ids))


# ------------------------------------------------------------------------------------- registry
_350M = dict(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=18, num_attention_heads=8,
             max_position_embeddings=2048)
LLAMA_DEFAULTS = {
    # upstream llama/modeling/llama-350M/config.json
    "slab_llama_350m": dict(_350M),
    # shared/reference/llama/mini (the golden model)
    "slab_llama_mini": dict(vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=128),
    # a second small size for tests and quick runs
    "slab_llama_tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                            num_attention_heads=4, max_position_embeddings=256),
}


@register_language_model
def slab_llama_350m(pretrained=False, **kwargs):
    """PRepBN LLaMA-350M (hidden 1024, 18 layers, 8 heads, SwiGLU 4096, vocab 32000, untied head):
    zero-shot average 49.78 vs 49.32 for the RMSNorm twin (``norm='rmsnorm'``)."""
    return build_registered(LlamaForCausalLM, LLAMA_DEFAULTS["slab_llama_350m"], pretrained, kwargs)


@register_language_model
def slab_llama_mini(pretrained=False, **kwargs):
    """The seeded reference mini (hidden 64, 2 layers, 4 heads, vocab 256), for tests."""
    return build_registered(LlamaForCausalLM, LLAMA_DEFAULTS["slab_llama_mini"], pretrained, kwargs)


@register_language_model
def slab_llama_tiny(pretrained=False, **kwargs):
    """A small LLaMA (hidden 128, 4 layers, 4 heads, vocab 512) for tests and quick runs."""
    return build_registered(LlamaForCausalLM, LLAMA_DEFAULTS["slab_llama_tiny"], pretrained, kwargs)


def is_llama_layout(keys):
    keys = set(keys)
    return "model.embed_tokens.weight" in keys and any(k.startswith("model.layers.0.") for k in keys)


def infer_llama_config(shapes, hf_config=None):
    """``(name, overrides)`` for a HF LLaMA state dict ``{key: shape}`` (torch names), sizes
    cross-checked against ``hf_config`` (config.json) where given. Raises CheckpointError when
    the shapes are inconsistent or the head count cannot be known."""
    hf_config = hf_config or {}
    vocab, hidden = shapes["model.embed_tokens.weight"]
    layers = 0
    while f"model.layers.{layers}.self_attn.q_proj.weight" in shapes:
        layers += 1
    if layers == 0:
        raise CheckpointError("a LLaMA state dict without model.layers.0.self_attn.q_proj.weight")
    gate = shapes.get("model.layers.0.mlp.gate_proj.weight")
    if gate is None:
        raise CheckpointError("a LLaMA state dict without model.layers.0.mlp.gate_proj.weight")
    cfg = dict(vocab_size=int(vocab), hidden_size=int(hidden), intermediate_size=int(gate[0]),
               num_hidden_layers=layers)
    inv = shapes.get("model.layers.0.self_attn.rotary_emb.inv_freq")
    if inv is not None:
        if len(inv) != 1 or inv[0] == 0 or hidden % (2 * inv[0]):
            raise CheckpointError(f"rotary_emb.inv_freq of shape {list(inv)} does not fit hidden size {hidden}")
        cfg["num_attention_heads"] = int(hidden // (2 * inv[0]))
    if "num_attention_heads" in hf_config:
        heads = hf_config["num_attention_heads"]
        if cfg.setdefault("num_attention_heads", heads) != heads:
            raise CheckpointError(f"config.json says {heads} attention heads, "
                                  f"inv_freq says {cfg['num_attention_heads']}")
    if "num_attention_heads" not in cfg:
        raise CheckpointError("cannot tell the number of attention heads (no config.json and no rotary_emb.inv_freq); "
                              "pass --set num_attention_heads=N")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
        if key in hf_config and hf_config[key] != cfg[key]:
            raise CheckpointError(f"config.json says {key}={hf_config[key]} but the weights have {cfg[key]}")
    for key, cast in (("max_position_embeddings", int), ("rms_norm_eps", float), ("rope_theta", float),
                      ("pad_token_id", int), ("bos_token_id", int), ("eos_token_id", int)):
        if hf_config.get(key) is not None:
            cfg[key] = cast(hf_config[key])
    if "model.layers.0.input_layernorm.norm1.weight" in shapes:
        cfg["norm"], cfg["folded"] = "prepbn", "none"
    elif "model.layers.0.input_layernorm.bn.weight" in shapes:
        cfg["norm"], cfg["folded"] = "repbn", "none"
    elif "model.layers.0.input_layernorm.weight" in shapes:
        cfg["norm"], cfg["folded"] = "rmsnorm", "none"
    elif "model.layers.0.self_attn.q_proj.bias" in shapes:
        if "model.norm.norm1.weight" in shapes:
            cfg["norm"], cfg["folded"] = "prepbn", "layers"
        elif "model.norm.bn.weight" in shapes:
            cfg["norm"], cfg["folded"] = "repbn", "layers"
        elif "lm_head.bias" in shapes:
            cfg["norm"], cfg["folded"] = "prepbn", "all"
        else:
            raise CheckpointError("a folded LLaMA state dict whose model.norm is neither PRepBN nor RepBN")
    else:
        raise CheckpointError("cannot tell the norm of this LLaMA state dict (no input_layernorm keys, no q_proj.bias)")
    name = next((n for n, d in LLAMA_DEFAULTS.items()
                 if all(cfg.get(k) == v for k, v in d.items() if k != "max_position_embeddings")), "slab_llama_350m")
    return name, overrides_from_defaults(LlamaForCausalLM, LLAMA_DEFAULTS[name], cfg)


@register_inferer
def _infer_llama(shapes):
    if not is_llama_layout(shapes):
        return None
    return infer_llama_config(shapes)


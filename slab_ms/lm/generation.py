"""Text generation for the LLaMA models: greedy and sampling, batches with padding, a fixed-length
KV cache (one prefill graph and one one-token graph per batch and cache size, no recompilation
per token in GRAPH_MODE), or no cache at all (the whole prefix recomputed per token, as upstream's
evaluation.py effectively does).

Semantics follow Hugging Face ``generate`` (transformers 4.29), which produced the goldens:
prompts are left-padded, ``position_ids = cumsum(attention_mask) - 1``, greedy takes the first
maximum, sampling applies temperature, then top-k, then top-p, and a row that produced
``eos_token_id`` is continued with ``pad_token_id`` until every row has finished.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn

from ..errors import ConfigError
from ..models.llama import MASK_MIN

CACHE_ROUND = 16   # cache lengths are rounded up, so similar requests reuse compiled graphs


@dataclass
class GenerationStats:
    """Timings of one :func:`generate` call (seconds). ``decode_tokens_per_s`` counts the tokens of
    every row produced after the first one-token step (that step may include its compilation)."""
    batch: int = 0
    prompt_len: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    step_s: list = field(default_factory=list)
    use_cache: bool = True

    @property
    def decode_tokens_per_s(self):
        steps = self.step_s[1:]
        return self.batch * len(steps) / sum(steps) if steps and sum(steps) > 0 else float("nan")

    @property
    def total_s(self):
        return self.prefill_s + sum(self.step_s)

    def summary(self):
        first = f", first step {self.step_s[0]:.3f}s" if self.step_s else ""
        return (f"batch {self.batch}, prompt {self.prompt_len} tokens, {self.new_tokens} new tokens per row; "
                f"prefill {self.prefill_s:.3f}s{first}; decode {self.decode_tokens_per_s:.2f} tokens/s "
                f"({'KV cache' if self.use_cache else 'no cache'})")


class KVCacheRunner(nn.Cell):
    """The LLaMA with a preallocated (B, H, S, D) key/value cache per layer, as frozen parameters
    updated in place. ``construct(input_ids, position_ids, bias, cache_index)`` runs T new tokens
    (T = prompt length for the prefill, 1 per decoding step), writes their keys and values into
    the slots ``cache_index`` (B, H, T, 3) and returns the last position's logits (B, vocab).

    ``auto_prefix=False`` keeps the model's parameter names; the cache is not part of the model.
    """

    def __init__(self, lm, batch, cache_len):
        super().__init__(auto_prefix=False)
        self.lm = lm
        cfg = lm.config
        heads = cfg["num_attention_heads"]
        head_dim = cfg["hidden_size"] // heads
        dtype = lm.model.embed_tokens.weight.dtype
        self.num_layers = cfg["num_hidden_layers"]
        shape = (batch, heads, cache_len, head_dim)
        self.k_cache = ms.ParameterTuple([Parameter(Tensor(np.zeros(shape, np.float32), dtype),
                                                    name=f"kv_cache.k.{i}", requires_grad=False)
                                          for i in range(self.num_layers)])
        self.v_cache = ms.ParameterTuple([Parameter(Tensor(np.zeros(shape, np.float32), dtype),
                                                    name=f"kv_cache.v.{i}", requires_grad=False)
                                          for i in range(self.num_layers)])

    def construct(self, input_ids, position_ids, bias, cache_index):
        model = self.lm.model
        h = model.embed_tokens(input_ids)
        for i in range(self.num_layers):
            h = model.layers[i](h, position_ids, bias, self.k_cache[i], self.v_cache[i], cache_index)
        h = model.norm(h[:, -1:, :], None)
        return self.lm.lm_head(h)[:, 0, :].astype(ms.float32)


def _round_up(n, k):
    return (n + k - 1) // k * k


def kv_runner(lm, batch, cache_len):
    """The (cached) :class:`KVCacheRunner` of ``lm`` for this batch and cache length. A runner is
    rebuilt when the model changed graph-wise (``reparameterize``, a dtype change)."""
    runners = lm.__dict__.setdefault("_kv_runners", {})
    key = (batch, cache_len, str(lm.model.embed_tokens.weight.dtype), getattr(lm, "_create_time", None),
           bool(getattr(lm, "reparameterized", False)))
    if key not in runners:
        runners.clear()   # one at a time: each holds a full-size cache
        runners[key] = KVCacheRunner(lm, batch, cache_len)
    runner = runners[key]
    runner.set_train(False)
    return runner


def pad_prompts(prompts, pad_token_id):
    """Left-pad a list of token-id lists: ``(input_ids, attention_mask)`` int64 arrays."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_token_id, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return ids, mask


def _positions(mask):
    """HF generate: ``cumsum(mask) - 1``, and 1 where the mask is 0."""
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, pos)


def _bias(key_mask, slots):
    """Additive float32 mask (B, 1, T, S): slot s is visible to the token written at slot t when
    ``s <= t`` and ``key_mask[b, s] == 1``. Values are 0 or finfo.min."""
    cache_len = key_mask.shape[1]
    causal = np.arange(cache_len)[None, :] <= np.asarray(slots)[:, None]          # (T, S)
    allowed = causal[None] & (key_mask[:, None, :] > 0)                              # (B, T, S)
    return np.where(allowed, 0.0, MASK_MIN).astype(np.float32)[:, None]


def _cache_index(batch, heads, slots):
    b, h, t = np.meshgrid(np.arange(batch), np.arange(heads), np.asarray(slots), indexing="ij")
    return np.stack([b, h, t], axis=-1).astype(np.int32)


def warp_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    """HF's logits warpers in HF's order: temperature, top-k, top-p (keeping at least one token)."""
    logits = np.asarray(logits, np.float32)
    if temperature != 1.0:
        logits = logits / np.float32(temperature)
    if top_k and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    if top_p < 1.0:
        order = np.argsort(logits, axis=-1, kind="stable")                  # ascending
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        probs = np.exp(sorted_logits - sorted_logits[:, -1:])
        probs /= probs.sum(axis=-1, keepdims=True)
        remove = np.cumsum(probs, axis=-1) <= (1 - top_p)
        remove[:, -1] = False
        removed = np.zeros_like(remove)
        np.put_along_axis(removed, order, remove, axis=-1)
        logits = np.where(removed, -np.inf, logits)
    return logits


def next_tokens(logits, do_sample, rng, temperature=1.0, top_k=0, top_p=1.0):
    if not do_sample:
        return np.argmax(logits, axis=-1)
    logits = warp_logits(logits, temperature, top_k, top_p)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    u = rng.random(probs.shape[0])[:, None]
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)


def generate(lm: nn.Cell, input_ids: Any, attention_mask: Any = None, max_new_tokens: int = 20,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | None = None, use_cache: bool = True, eos_token_id: int | str | None = "config",
             pad_token_id: int | None = None, stats: GenerationStats | None = None) -> np.ndarray:
    """Generate continuations of ``input_ids`` (B, P) (a left-padded batch with its
    ``attention_mask``, or a list of token-id lists, padded here). Returns the ids (B, P + n),
    n <= max_new_tokens (generation stops when every row has produced eos). ``stats``, a
    :class:`GenerationStats`, receives the timings."""
    cfg = lm.config
    if eos_token_id == "config":
        eos_token_id = cfg["eos_token_id"]
    pad = cfg["pad_token_id"] if pad_token_id is None else pad_token_id
    if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], (list, tuple)):
        input_ids, attention_mask = pad_prompts(input_ids, pad)
    ids = np.asarray(input_ids, np.int64)
    if ids.ndim != 2 or ids.size == 0:
        raise ConfigError(f"input_ids must be a (batch, length) array, got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
    if mask.shape != ids.shape:
        raise ConfigError(f"attention_mask {mask.shape} does not match input_ids {ids.shape}")
    if ids.min() < 0 or ids.max() >= cfg["vocab_size"]:
        raise ConfigError(f"token ids must lie in [0, {cfg['vocab_size']}), got {ids.min()}..{ids.max()}")
    if max_new_tokens < 1:
        raise ConfigError("max_new_tokens must be at least 1")
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1 or top_k < 0):
        raise ConfigError("sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0")
    stats = stats if stats is not None else GenerationStats()
    batch, prompt_len = ids.shape
    stats.batch, stats.prompt_len, stats.use_cache = batch, prompt_len, use_cache
    cache_len = _round_up(prompt_len + max_new_tokens, CACHE_ROUND)
    rng = np.random.default_rng(seed)
    lm.set_train(False)
    unfinished = np.ones(batch, bool)
    out = [ids]
    if use_cache:
        step = _cached_stepper(lm, ids, mask, cache_len, stats)
    else:
        step = _uncached_stepper(lm, ids, mask, cache_len, stats)
    logits = step(None)
    for i in range(max_new_tokens):
        nxt = next_tokens(logits, do_sample, rng, temperature, top_k, top_p)
        if eos_token_id is not None:
            nxt = np.where(unfinished, nxt, pad)
            unfinished &= nxt != eos_token_id
        out.append(nxt[:, None].astype(np.int64))
        stats.new_tokens = i + 1
        if (eos_token_id is not None and not unfinished.any()) or i == max_new_tokens - 1:
            break
        logits = step(nxt)
    return np.concatenate(out, axis=1)


def _cached_stepper(lm, ids, mask, cache_len, stats):
    batch, prompt_len = ids.shape
    heads = lm.config["num_attention_heads"]
    runner = kv_runner(lm, batch, cache_len)
    key_mask = np.zeros((batch, cache_len), np.int64)
    key_mask[:, :prompt_len] = mask
    state = {"slot": prompt_len, "next_pos": mask.sum(axis=1)}

    def step(tokens):
        t0 = time.perf_counter()
        if tokens is None:
            slots = np.arange(prompt_len)
            x, pos = ids, _positions(mask)
        else:
            slot = state["slot"]
            slots = np.array([slot])
            key_mask[:, slot] = 1
            x, pos = tokens[:, None], state["next_pos"][:, None]
            state["slot"] += 1
            state["next_pos"] = state["next_pos"] + 1
        logits = runner(Tensor(x.astype(np.int32)), Tensor(pos.astype(np.int32)), Tensor(_bias(key_mask, slots)),
                        Tensor(_cache_index(batch, heads, slots))).asnumpy()
        (stats.step_s.append if tokens is not None else lambda s: setattr(stats, "prefill_s", s))(
            time.perf_counter() - t0)
        return logits
    return step


def _uncached_stepper(lm, ids, mask, cache_len, stats):
    """The whole sequence, padded on the right to the fixed length, recomputed per token."""
    batch, prompt_len = ids.shape
    full = np.full((batch, cache_len), lm.config["pad_token_id"], np.int64)
    full_mask = np.zeros((batch, cache_len), np.int64)
    full[:, :prompt_len], full_mask[:, :prompt_len] = ids, mask
    state = {"cur": prompt_len}

    def step(tokens):
        t0 = time.perf_counter()
        if tokens is not None:
            full[:, state["cur"]] = tokens
            full_mask[:, state["cur"]] = 1
            state["cur"] += 1
        logits = lm(Tensor(full.astype(np.int32)), Tensor(full_mask.astype(np.int32)),
                    Tensor(_positions(full_mask).astype(np.int32)))
        logits = logits[:, state["cur"] - 1].astype(ms.float32).asnumpy()
        (stats.step_s.append if tokens is not None else lambda s: setattr(stats, "prefill_s", s))(
            time.perf_counter() - t0)
        return logits
    return step


def generate_text(lm: nn.Cell, tokenizer: Any, prompts: list[str], stats: GenerationStats | None = None,
                  **kwargs: Any) -> list[str]:
    """Generate from text prompts with a :class:`slab_ms.lm.tokenizer.Tokenizer` (checked against the
    model's vocabulary). Returns the list of continuations (prompt excluded)."""
    tokenizer.check_vocab(lm.config["vocab_size"])
    encoded = [tokenizer.encode(p) for p in prompts]
    kwargs.setdefault("eos_token_id", tokenizer.eos_id if tokenizer.eos_id >= 0 else lm.config["eos_token_id"])
    ids = generate(lm, encoded, stats=stats, **kwargs)
    width = max(len(e) for e in encoded)
    return [tokenizer.decode(row[width:].tolist()) for row in ids], ids

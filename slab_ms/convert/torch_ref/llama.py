"""A small PyTorch reference of upstream's PRepBN LLaMA, written from the facts in
``shared/reference/llama/README.md`` (not from upstream's or Hugging Face's code).

Module names and buffer registration give the Hugging Face ``LlamaForCausalLM`` state-dict
layout key for key, so ``load_state_dict(strict=True)`` takes upstream's checkpoints. Used by the
parity tests (goldens, fresh random weights) and by ``bench/bench_lm.py``.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    """Mean of squares in float32, ``x * rsqrt(ms + eps)``, cast to the weight dtype, times weight."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x, pad_mask=None):
        ms = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        y = x * torch.rsqrt(ms + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.to(self.weight.dtype)
        return self.weight * y


class RepBN(nn.Module):
    """``BN(x) + alpha * x`` over channels of (B*T, C) tokens, zero-initialised; in training a pad
    mask restricts the statistics to real tokens and passes padded ones through unchanged."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm1d(dim, eps=eps)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x, pad_mask=None):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.training and pad_mask is not None:
            keep = pad_mask.reshape(-1).bool()
            y = flat.clone()
            y[keep] = self.bn(flat[keep])
        else:
            y = self.bn(flat)
        return (y + self.alpha * flat).reshape(shape)


class LinearNorm(nn.Module):
    """PRepBN for LLaMA: RMSNorm -> RepBN with counters gated by ``num_step % 16``."""

    def __init__(self, dim, eps=1e-6, warm=10000, step=18000, r0=1.0):
        super().__init__()
        self.register_buffer("num_step", torch.tensor(0))
        self.register_buffer("warm", torch.tensor(warm))
        self.register_buffer("iter", torch.tensor(step))
        self.register_buffer("total_step", torch.tensor(step))
        self.r0 = r0
        self.norm1 = RMSNorm(dim, eps)
        self.norm2 = RepBN(dim, eps)

    def forward(self, x, pad_mask=None):
        if not self.training:
            return self.norm2(x)
        on_phase = int(self.num_step) % 16 == 0
        if self.warm > 0:
            if on_phase:
                self.warm.sub_(1)
            out = self.norm1(x)
        else:
            lam = self.r0 * self.iter / self.total_step
            if self.iter > 0 and on_phase:
                self.iter.sub_(1)
            out = lam * self.norm1(x) + (1 - lam) * self.norm2(x, pad_mask)
        self.num_step.copy_((self.num_step + 1) % 16)
        return out


def make_norm(kind, dim, eps, warm, step):
    if kind == "prepbn":
        return LinearNorm(dim, eps, warm, step)
    if kind == "repbn":
        return RepBN(dim, eps)
    return RMSNorm(dim, eps)


class Rotary(nn.Module):
    def __init__(self, dim, max_pos, theta=10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)
        t = torch.arange(max_pos, dtype=torch.float32)
        emb = torch.cat([torch.outer(t, inv_freq)] * 2, dim=-1)
        self.register_buffer("cos_table", emb.cos(), persistent=False)
        self.register_buffer("sin_table", emb.sin(), persistent=False)

    def forward(self, position_ids, dtype):
        return self.cos_table[position_ids].to(dtype), self.sin_table[position_ids].to(dtype)


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, hidden, heads, max_pos, theta=10000.0, bias=False):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q_proj = nn.Linear(hidden, hidden, bias=bias)
        self.k_proj = nn.Linear(hidden, hidden, bias=bias)
        self.v_proj = nn.Linear(hidden, hidden, bias=bias)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.rotary_emb = Rotary(self.head_dim, max_pos, theta)

    def forward(self, x, position_ids, mask, past=None):
        b, t, c = x.shape
        split = lambda y: y.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if past is not None:
            if past[0] is not None:
                k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
            past[0], past[1] = k, v
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)
        scores = torch.max(scores + mask, torch.tensor(torch.finfo(scores.dtype).min))
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return self.o_proj((probs @ v).transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, hidden, inter, bias=False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h = cfg["hidden_size"]
        self.self_attn = Attention(h, cfg["num_attention_heads"], cfg["max_position_embeddings"], cfg["rope_theta"])
        self.mlp = MLP(h, cfg["intermediate_size"])
        self.input_layernorm = make_norm(cfg["norm"], h, cfg["rms_norm_eps"], cfg["warm"], cfg["total_step"])
        self.post_attention_layernorm = make_norm(cfg["norm"], h, cfg["rms_norm_eps"], cfg["warm"],
                                                  cfg["total_step"])

    def forward(self, x, position_ids, mask, past=None):
        x = x + self.self_attn(self.input_layernorm(x), position_ids, mask, past)
        return x + self.mlp(self.post_attention_layernorm(x))

    @torch.no_grad()
    def merge_bn(self):
        """Fold the eval-mode RepBN of both norms into q/k/v and gate/up (new biases)."""
        for norm_name, owner, names in (("input_layernorm", self.self_attn, ("q_proj", "k_proj", "v_proj")),
                                        ("post_attention_layernorm", self.mlp, ("gate_proj", "up_proj"))):
            norm = getattr(self, norm_name)
            rep = norm.norm2 if isinstance(norm, LinearNorm) else norm
            bn = rep.bn
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            a, c = s + rep.alpha, bn.bias - s * bn.running_mean
            for name in names:
                old = getattr(owner, name)
                new = nn.Linear(old.in_features, old.out_features, bias=True).to(old.weight.dtype)
                new.weight.copy_(old.weight * a[None, :])
                new.bias.copy_(old.weight @ c)
                setattr(owner, name, new)
            setattr(self, norm_name, nn.Identity())


def make_mask(attention_mask, t, past_len, dtype):
    """Causal + padding additive mask (finfo.min each, summed), (B or 1, 1, t, past_len + t)."""
    neg = torch.finfo(dtype).min
    total = past_len + t
    rows = torch.arange(past_len, total)[:, None]
    cols = torch.arange(total)[None, :]
    mask = torch.where(cols <= rows, 0.0, neg).to(dtype)[None, None]
    if attention_mask is not None:
        pad = torch.where(attention_mask[:, None, None, :total] > 0, 0.0, neg).to(dtype)
        mask = mask + pad
    return mask


class LlamaModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"], padding_idx=cfg["pad_token_id"])
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = make_norm(cfg["norm"], cfg["hidden_size"], cfg["rms_norm_eps"], cfg["warm"], cfg["total_step"])

    def forward(self, input_ids, attention_mask=None, position_ids=None, past=None):
        b, t = input_ids.shape
        past_len = 0 if past is None or past[0][0] is None else past[0][0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + t)[None].expand(b, t)
        h = self.embed_tokens(input_ids)
        mask = make_mask(attention_mask, t, past_len, h.dtype)
        for i, layer in enumerate(self.layers):
            h = layer(h, position_ids, mask, None if past is None else past[i])
        pad = attention_mask[:, past_len:] if attention_mask is not None else None
        return self.norm(h, pad)


DEFAULTS = dict(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=18,
                num_attention_heads=8, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, norm="prepbn", warm=10000, total_step=18000)


class LlamaForCausalLM(nn.Module):
    def __init__(self, **cfg):
        super().__init__()
        unknown = set(cfg) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown arguments {sorted(unknown)}")
        self.config = dict(DEFAULTS, **cfg)
        self.model = LlamaModel(self.config)
        self.lm_head = nn.Linear(self.config["hidden_size"], self.config["vocab_size"], bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past=None):
        return self.lm_head(self.model(input_ids, attention_mask, position_ids, past))

    def merge_bn(self):
        for layer in self.model.layers:
            layer.merge_bn()
        return self

    @torch.no_grad()
    def greedy(self, input_ids, max_new_tokens, use_cache=True):
        """Greedy decoding of an unpadded batch, positions 0..; stops nowhere (fixed length)."""
        ids = input_ids
        past = [[None, None] for _ in self.model.layers] if use_cache else None
        step_in = ids
        for _ in range(max_new_tokens):
            if use_cache:
                start = ids.shape[1] - step_in.shape[1]
                pos = torch.arange(start, ids.shape[1])[None].expand(ids.shape[0], -1)
                logits = self(step_in, None, pos, past)
            else:
                logits = self(ids)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            step_in = nxt
        return ids


def create_model(name="slab_llama_350m", **overrides):
    sizes = {
        "slab_llama_350m": {},
        "slab_llama_mini": dict(vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=128),
        "slab_llama_tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                                num_attention_heads=4, max_position_embeddings=256),
    }
    if name not in sizes:
        raise KeyError(f"unknown model {name!r}")
    return LlamaForCausalLM(**dict(sizes[name], **overrides))

"""Simplified Linear Attention (SLA), SLAB paper section 4 / SPEC section 4.

Upstream: ``SimplifiedLinearAttention`` in ``classification/models/slab_swin.py`` (also
``slab_deit.py``; ``slab_pvt.py`` with ``q``/``kv``; ``slab_cswin.py`` within stripes, which
``models/cswin.py`` builds from :func:`sla_heads`).
"""
import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .common import as_float32, cast_back, chunk_last, shared_graph


class SimplifiedLinearAttention(nn.Cell):
    """ReLU-kernel linear attention over the N tokens of one window, plus a depthwise conv of v.

    ``out = (relu(q) @ (relu(k + pe)^T @ v)) / (relu(q) . sum_j relu(k_j + pe_j) + 1e-6) + dwc(v)``

    - ``positional_encoding`` (1, N, C) is added to k only.
    - The core runs in float32 whatever the AMP level (upstream disables autocast there).
    - The product order is the cheaper of ``q (k^T v)`` (~2Nd^2) and ``(q k^T) v`` (~2N^2 d).
    - One depthwise ``dwc`` conv (head_dim channels, kernel 5) is shared by all heads; v is
      viewed as a (d, sqrt(N), sqrt(N)) map with row-major tokens.
    - No einsum (Ascend only): batched matmuls.
    """

    @shared_graph
    def __init__(self, dim, num_tokens, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, kernel_size=5,
                 separate_kv=False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"SLA needs a square token grid, got {num_tokens} tokens")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.num_tokens = num_tokens
        self.side = side
        self.separate_kv = separate_kv
        # Registration order mirrors the PyTorch module (own parameter first, then the
        # projections, proj, dwc), so the state-dict layout is upstream's.
        self.positional_encoding = Parameter(Tensor(np.zeros((1, num_tokens, dim), np.float32)),
                                             name="positional_encoding")
        if separate_kv:   # SLAB-PVT: ``q`` and ``kv``
            self.q = nn.Dense(dim, dim, has_bias=qkv_bias)
            self.kv = nn.Dense(dim, dim * 2, has_bias=qkv_bias)
        else:             # SLAB-Swin, SLAB-DeiT: one ``qkv``
            self.qkv = nn.Dense(dim, dim * 3, has_bias=qkv_bias)
        self.proj = nn.Dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()
        d = self.head_dim
        self.dwc = nn.Conv2d(d, d, kernel_size, pad_mode="pad", padding=kernel_size // 2, group=d, has_bias=True)
        self.kv_first = prefer_kv_first(num_tokens, num_tokens, d)

    def input_layers(self):
        """The Dense layers that read the attention input (where a preceding norm folds)."""
        return ("q", "kv") if self.separate_kv else ("qkv",)

    def construct(self, x, mask=None):
        if self.separate_kv:
            q = self.q(x)
            k, v = chunk_last(self.kv(x), 2)
        else:
            q, k, v = chunk_last(self.qkv(x), 3)
        k = k + self.positional_encoding.astype(k.dtype)
        out = sla_heads(q, k, v, self.num_heads, self.side, self.side, self.dwc, self.kv_first)
        return self.proj_drop(self.proj(out))


def prefer_kv_first(num_queries, num_keys, head_dim):
    """Upstream's order choice: ``q (k^T v)`` when ``i*j*(c+d) > c*d*(i+j)`` (c = d = head_dim)."""
    return num_queries * num_keys * 2 * head_dim > head_dim * head_dim * (num_queries + num_keys)


def split_heads(t, num_heads):
    """(B, N, h*d) -> (B*h, N, d), heads taken from consecutive channel blocks."""
    b, n, c = t.shape
    return t.reshape(b, n, num_heads, c // num_heads).transpose(0, 2, 1, 3).reshape(b * num_heads, n, c // num_heads)


def merge_heads(t, num_heads):
    """(B*h, N, d) -> (B, N, h*d)."""
    bh, n, d = t.shape
    return t.reshape(bh // num_heads, num_heads, n, d).transpose(0, 2, 1, 3).reshape(bh // num_heads, n, num_heads * d)


def relu_linear_attention(q, k, v, kv_first):
    """The SLA core on (B*h, N, d) heads, in float32: ``relu(q) (relu(k)^T v) / (relu(q) . sum_j relu(k_j) + 1e-6)``
    (``k`` already carries its positional encoding). No 1/sqrt(d) scale."""
    q = as_float32(ops.relu(q))
    k = as_float32(ops.relu(k))
    vf = as_float32(v)
    denom = ops.matmul(q, k.sum(axis=1).expand_dims(-1)) + 1e-6  # (B*h, N, 1)
    if kv_first:
        out = ops.matmul(q, ops.matmul(k.transpose(0, 2, 1), vf))
    else:
        out = ops.matmul(ops.matmul(q, k.transpose(0, 2, 1)), vf)
    return out / denom   # a division, not 1/x: ONNX export has no Reciprocal


def token_map_conv(conv, t, height, width):
    """Apply a conv to (B', N, d) tokens viewed as a (d, height, width) map with row-major tokens."""
    d = t.shape[-1]
    fmap = t.reshape(-1, height, width, d).transpose(0, 3, 1, 2)
    return conv(fmap).transpose(0, 2, 3, 1).reshape(-1, height * width, d)


def sla_heads(q, k, v, num_heads, height, width, dwc, kv_first):
    """SLA over (B, N, C) tokens of one window, N = height * width: split heads, the float32
    core, plus ``dwc`` of v shared by all heads; returns merged (B, N, C) in v's dtype."""
    qh, kh, vh = split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads)
    out = cast_back(relu_linear_attention(qh, kh, vh, kv_first), v.dtype)
    out = out + cast_back(token_map_conv(dwc, vh, height, width), out.dtype)
    return merge_heads(out, num_heads)

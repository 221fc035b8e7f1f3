"""Simplified Linear Attention (SLA), SLAB paper section 4 / SPEC section 4.

Upstream: ``SimplifiedLinearAttention`` in ``classification/models/slab_swin.py``.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


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

    def __init__(self, dim, num_tokens, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, kernel_size=5):
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
        # Registration order mirrors the PyTorch module (own parameter first, then qkv, proj, dwc).
        self.positional_encoding = Parameter(Tensor(np.zeros((1, num_tokens, dim), np.float32)),
                                             name="positional_encoding")
        self.qkv = nn.Dense(dim, dim * 3, has_bias=qkv_bias)
        self.proj = nn.Dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()
        d = self.head_dim
        self.dwc = nn.Conv2d(d, d, kernel_size, pad_mode="pad", padding=kernel_size // 2, group=d, has_bias=True)
        # i*j*(c+d) > c*d*(i+j) with i = j = N, c = d = head_dim, as upstream decides.
        self.kv_first = num_tokens * num_tokens * 2 * d > d * d * 2 * num_tokens

    def _heads(self, t):
        """(B, N, C) -> (B*h, N, d)."""
        b = t.shape[0]
        return t.reshape(b, self.num_tokens, self.num_heads, self.head_dim).transpose(0, 2, 1, 3).reshape(
            b * self.num_heads, self.num_tokens, self.head_dim)

    def construct(self, x, mask=None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, c)
        q = qkv[:, :, 0]
        k = qkv[:, :, 1] + self.positional_encoding.astype(qkv.dtype)
        v = qkv[:, :, 2]
        q = self._heads(ops.relu(q)).astype(ms.float32)
        k = self._heads(ops.relu(k)).astype(ms.float32)
        v = self._heads(v)
        vf = v.astype(ms.float32)
        denom = ops.matmul(q, k.sum(axis=1).expand_dims(-1)) + 1e-6  # (B*h, N, 1)
        if self.kv_first:
            out = ops.matmul(q, ops.matmul(k.transpose(0, 2, 1), vf))
        else:
            out = ops.matmul(ops.matmul(q, k.transpose(0, 2, 1)), vf)
        out = (out / denom).astype(x.dtype)   # a division, not 1/x: ONNX export has no Reciprocal
        # Depthwise conv of v over the token grid, one conv shared by every head.
        fmap = v.reshape(-1, self.side, self.side, self.head_dim).transpose(0, 3, 1, 2)
        fmap = self.dwc(fmap).transpose(0, 2, 3, 1).reshape(-1, n, self.head_dim)
        out = out + fmap.astype(out.dtype)
        out = out.reshape(b, self.num_heads, n, self.head_dim).transpose(0, 2, 1, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(out))

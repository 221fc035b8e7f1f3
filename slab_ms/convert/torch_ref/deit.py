"""DeiT with RepBN/PRepBN and SLAB-DeiT in PyTorch (reference for tests)."""
import torch
import torch.nn.functional as F
from torch import nn

from .prepbn import make_norm
from .swin import DropPath, Mlp


def _upcast(t):
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def linear_attention(q, k, v, heads, dwc, hw):
    """SLA core on (B, N, C) tensors, q and k already through ReLU; adds ``dwc`` of v on an ``hw`` map.

    Returns (B, N, C). The cheaper multiplication order is picked as upstream does.
    """
    b, n, c = q.shape
    d = c // heads

    def split(t):
        return t.reshape(b, -1, heads, d).transpose(1, 2).reshape(b * heads, -1, d)

    q, k, v = split(q), split(k), split(v)
    m = k.shape[1]
    z = 1 / (q @ k.sum(1).unsqueeze(-1) + 1e-6)
    if n * m * 2 * d > d * d * (n + m):
        out = q @ (k.transpose(1, 2) @ v)
    else:
        out = (q @ k.transpose(1, 2)) @ v
    out = out * z
    fmap = v.reshape(b * heads, hw[0], hw[1], d).permute(0, 3, 1, 2)
    out = out + dwc(fmap).permute(0, 2, 3, 1).reshape(b * heads, n, d)
    return out.reshape(b, heads, n, d).transpose(1, 2).reshape(b, n, c)


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class SimplifiedLinearAttention(nn.Module):
    """SLA over all ``grid * grid`` patch tokens (no class token)."""

    def __init__(self, dim, grid, heads, qkv_bias=True, proj_drop=0.0, kernel_size=5):
        super().__init__()
        self.heads, self.grid = heads, grid
        d = dim // heads
        self.positional_encoding = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, c).unbind(2)
        q, k = F.relu(q), F.relu(k + self.positional_encoding)
        # upstream runs this part in float32 with autocast off
        out = linear_attention(_upcast(q), _upcast(k), _upcast(v), self.heads, self.dwc, (self.grid, self.grid))
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, qkv_bias, drop, attn_drop, dp, norm_layer, attn_type, grid,
                 kernel_size):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn_type == "L":
            self.attn = SimplifiedLinearAttention(dim, grid, heads, qkv_bias, drop, kernel_size)
        else:
            self.attn = Attention(dim, heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(dp) if dp > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """DeiT. ``attn_type="S"``: softmax attention, class token prepended, head on token 0 (deit.py).
    ``attn_type="L"``: SLA, patch tokens only (``cls_token`` kept but unused), mean of the normed tokens
    (slab_deit.py)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 attn_type="S", norm="prepbn", total_step=300000, ln_eps=1e-6, kernel_size=5):
        super().__init__()
        if attn_type not in ("S", "L"):
            raise ValueError(f"attn_type must be 'S' or 'L', got {attn_type!r}")
        norm_layer = make_norm(norm, total_step, ln_eps)
        self.attn_type = attn_type
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + (attn_type == "S"), embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_layer,
                  attn_type, grid, kernel_size) for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x):
        x = self.patch_embed(x)
        if self.attn_type == "S":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = self.norm(self.blocks(self.pos_drop(x + self.pos_embed)))
        return self.head(x[:, 0] if self.attn_type == "S" else x.mean(1))


_TINY = dict(embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.0)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.0)
_SLAB = dict(attn_type="L", norm="prepbn", total_step=60000, ln_eps=1e-6)
MODELS = {
    "deit_tiny_prepbn": dict(_TINY, attn_type="S", norm="repbn"),
    "deit_small_prepbn": dict(_SMALL, attn_type="S", norm="prepbn", total_step=300000, ln_eps=1e-6),
    "slab_deit_tiny": dict(_TINY, **_SLAB),
    "slab_deit_small": dict(_SMALL, **_SLAB),
}


def create_model(name, **overrides):
    cfg = dict(MODELS[name])
    cfg.update(overrides)
    return VisionTransformer(**cfg)

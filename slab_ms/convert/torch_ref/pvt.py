"""PVT with PRepBN and SLAB-PVT in PyTorch (reference for tests)."""
import torch
import torch.nn.functional as F
from torch import nn

from .deit import linear_attention
from .prepbn import make_norm
from .swin import DropPath, Mlp
from .swin import PatchEmbed as SwinPatchEmbed


class Attention(nn.Module):
    """Softmax attention; keys and values from a ``sr_ratio``-strided conv + norm when ``sr_ratio > 1``."""

    def __init__(self, dim, heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, sr_ratio=1, norm_layer=None):
        super().__init__()
        self.heads, self.sr_ratio = heads, sr_ratio
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = norm_layer(dim)

    def forward(self, x, h, w):
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class SimplifiedLinearAttention(nn.Module):
    """SLA with separate ``q`` and ``kv`` projections; no spatial reduction."""

    def __init__(self, dim, num_patches, heads, qkv_bias=True, proj_drop=0.0, sr_ratio=1, kernel_size=5):
        super().__init__()
        if sr_ratio != 1:
            raise ValueError(f"SLA with spatial reduction is not supported (sr_ratio={sr_ratio})")
        self.heads = heads
        d = dim // heads
        self.positional_encoding = nn.Parameter(torch.zeros(1, num_patches, dim))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d)

    def forward(self, x, h, w):
        b, n, c = x.shape
        k, v = self.kv(x).reshape(b, n, 2, c).unbind(2)
        q, k = F.relu(self.q(x)), F.relu(k + self.positional_encoding)
        return self.proj_drop(self.proj(linear_attention(q, k, v, self.heads, self.dwc, (h, w))))


class Block(nn.Module):
    def __init__(self, dim, num_patches, heads, mlp_ratio, qkv_bias, drop, attn_drop, dp, norm_layer, sr_ratio,
                 kernel_size, attn_type):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn_type == "L":
            self.attn = SimplifiedLinearAttention(dim, num_patches, heads, qkv_bias, drop, sr_ratio, kernel_size)
        else:
            self.attn = Attention(dim, heads, qkv_bias, attn_drop, drop, sr_ratio, norm_layer)
        self.drop_path = DropPath(dp) if dp > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(SwinPatchEmbed):
    """Swin's patch embedding, also returning the map size."""

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class PyramidVisionTransformer(nn.Module):
    """PVT: four stages of patch embedding (+ ``pos_embed{i}``) and blocks, no final norm, token mean -> head.

    ``attn_type`` has one letter per stage: ``S`` softmax with ``sr_ratios``, ``L`` SLA with ``la_sr_ratios``.
    Only the model's own ``img_size`` is supported (upstream's pos_embed resize is then the identity).
    """

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dims=(64, 128, 320, 512),
                 num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.0, depths=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1), la_sr_ratios="1111",
                 num_stages=4, kernel_size=5, attn_type="SSSS", norm="prepbn", total_step=300000, ln_eps=1e-6):
        super().__init__()
        norm_layer = make_norm(norm, total_step, ln_eps)
        self.num_stages = num_stages
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        grid = img_size // patch_size
        for i in range(num_stages):
            if i > 0:
                grid //= 2
            dim = embed_dims[i]
            sr = sr_ratios[i] if attn_type[i] == "S" else int(la_sr_ratios[i])
            cur = sum(depths[:i])
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(
                patch_size if i == 0 else 2, in_chans if i == 0 else embed_dims[i - 1], dim, norm_layer))
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, grid * grid, dim)))
            setattr(self, f"pos_drop{i + 1}", nn.Dropout(drop_rate))
            setattr(self, f"block{i + 1}", nn.ModuleList([
                Block(dim, grid * grid, num_heads[i], mlp_ratios[i], qkv_bias, drop_rate, attn_drop_rate,
                      dpr[cur + j], norm_layer, sr, kernel_size, attn_type[i]) for j in range(depths[i])]))
            nn.init.trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        self.head = nn.Linear(embed_dims[num_stages - 1], num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        b = x.shape[0]
        for i in range(1, self.num_stages + 1):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            x = getattr(self, f"pos_drop{i}")(x + getattr(self, f"pos_embed{i}"))
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            if i < self.num_stages:
                x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return self.head(x.mean(1))


_PVT = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
            qkv_bias=True, sr_ratios=(8, 4, 2, 1), norm="prepbn", total_step=300000, ln_eps=1e-6)
MODELS = {
    "pvt_tiny_prepbn": dict(_PVT, depths=(2, 2, 2, 2), attn_type="SSSS", drop_path_rate=0.0),
    "pvt_small_prepbn": dict(_PVT, depths=(3, 4, 6, 3), attn_type="SSSS", drop_path_rate=0.1),
    "pvt_medium_prepbn": dict(_PVT, depths=(3, 4, 18, 3), attn_type="SSSS", drop_path_rate=0.3),
    "slab_pvt_tiny": dict(_PVT, depths=(2, 2, 2, 2), attn_type="LLLL", la_sr_ratios="1111", drop_path_rate=0.0),
    "slab_pvt_small": dict(_PVT, depths=(3, 4, 6, 3), attn_type="LLLL", la_sr_ratios="1111", drop_path_rate=0.1),
    "slab_pvt_medium": dict(_PVT, depths=(3, 4, 18, 3), attn_type="LLLL", la_sr_ratios="1111", drop_path_rate=0.3),
}


def create_model(name, **overrides):
    cfg = dict(MODELS[name])
    cfg.update(overrides)
    return PyramidVisionTransformer(**cfg)

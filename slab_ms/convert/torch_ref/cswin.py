"""SLAB-CSWin in PyTorch (reference for tests)."""
import torch
import torch.nn.functional as F
from torch import nn

from .deit import linear_attention
from .prepbn import make_norm
from .swin import DropPath, Mlp


def to_stripes(x, res, hs, ws):
    """(B, res*res, C) tokens -> (B * windows, hs*ws, C), windows and their tokens row-major."""
    b, _, c = x.shape
    x = x.view(b, res // hs, hs, res // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hs * ws, c)


def from_stripes(x, res, hs, ws):
    c = x.shape[-1]
    x = x.view(-1, res // hs, res // ws, hs, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, res * res, c)


class _Stripes(nn.Module):
    """Shared by both branch attentions: stripe shape from ``idx`` (-1 whole map, 0 columns, 1 rows) and the
    3x3 depthwise ``get_v`` conv whose output on v (per stripe) is the LePE term."""

    def __init__(self, dim, res, idx, split_size):
        super().__init__()
        self.res = res
        self.hs, self.ws = {-1: (res, res), 0: (res, split_size), 1: (split_size, res)}[idx]
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def stripes(self, t):
        return to_stripes(t, self.res, self.hs, self.ws)

    def lepe(self, v):
        b, n, c = v.shape
        fmap = v.transpose(1, 2).reshape(b, c, self.hs, self.ws).contiguous()
        return self.get_v(fmap).flatten(2).transpose(1, 2)


class LePEAttention(_Stripes):
    def __init__(self, dim, res, idx, split_size, heads, attn_drop=0.0):
        super().__init__(dim, res, idx, split_size)
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, qkv):
        q, k, v = (self.stripes(t) for t in qkv)
        b, n, c = q.shape
        lepe = self.lepe(v)

        def split(t):
            return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

        q, k, v, lepe = split(q) * self.scale, split(k), split(v), split(lepe)
        attn = self.attn_drop((q @ k.transpose(-2, -1)).softmax(-1))
        out = (attn @ v + lepe).transpose(1, 2).reshape(b, n, c)
        return from_stripes(out, self.res, self.hs, self.ws)


class SimplifiedLinearAttention(_Stripes):
    """SLA within each stripe, plus LePE. ``scale`` is an unused parameter kept for the checkpoint layout."""

    def __init__(self, dim, res, idx, split_size, heads, kernel_size=5):
        super().__init__(dim, res, idx, split_size)
        self.heads = heads
        d = dim // heads
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.positional_encoding = nn.Parameter(torch.zeros(1, self.hs * self.ws, dim))
        self.dwc = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d)

    def forward(self, qkv):
        q, k, v = (self.stripes(t) for t in qkv)
        q, k = F.relu(q), F.relu(k + self.positional_encoding)
        out = linear_attention(q, k, v, self.heads, self.dwc, (self.hs, self.ws)) + self.lepe(v)
        return from_stripes(out, self.res, self.hs, self.ws)


class CSWinBlock(nn.Module):
    """Two half-width branches (column and row stripes) unless the stripe covers the map (``last_stage``)."""

    def __init__(self, dim, res, heads, split_size, mlp_ratio, qkv_bias, drop, attn_drop, dp, norm_layer,
                 last_stage, kernel_size, attn_type):
        super().__init__()
        self.res = res
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm1 = norm_layer(dim)
        last_stage = last_stage or res == split_size
        self.proj = nn.Linear(dim, dim)
        if last_stage:
            branches = [(dim, -1, heads)]
        else:
            branches = [(dim // 2, 0, heads // 2), (dim // 2, 1, heads // 2)]
        if attn_type == "L":
            self.attns = nn.ModuleList([SimplifiedLinearAttention(bd, res, idx, split_size, bh, kernel_size)
                                        for bd, idx, bh in branches])
        else:
            self.attns = nn.ModuleList([LePEAttention(bd, res, idx, split_size, bh, attn_drop)
                                        for bd, idx, bh in branches])
        self.drop_path = DropPath(dp) if dp > 0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.norm2 = norm_layer(dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, c).permute(2, 0, 1, 3)
        if len(self.attns) == 2:
            y = torch.cat([self.attns[0](qkv[..., :c // 2]), self.attns[1](qkv[..., c // 2:])], 2)
        else:
            y = self.attns[0](qkv)
        x = x + self.drop_path(self.proj(y))  # upstream applies no dropout after proj here
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MergeBlock(nn.Module):
    """Conv 3x3 stride 2 + norm. The ``contiguous`` calls here and in ``lepe`` follow upstream's memory layouts,
    which select torch's conv/BN kernels: without them results differ in the last bits."""

    def __init__(self, dim, dim_out, norm_layer):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, 2, 1)
        self.norm = norm_layer(dim_out)

    def forward(self, x):
        b, n, c = x.shape
        side = int(n ** 0.5)
        x = self.conv(x.transpose(1, 2).reshape(b, c, side, side).contiguous())
        return self.norm(x.flatten(2).transpose(1, 2).contiguous())


class ToTokens(nn.Module):
    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class CSWinTransformer(nn.Module):
    """CSWin with per-stage attention letters (``L`` SLA with stripe ``la_split_size``, ``S`` LePE softmax with
    ``split_size``), final norm, token mean -> head."""

    def __init__(self, img_size=224, in_chans=3, num_classes=1000, embed_dim=64, depth=(2, 4, 18, 1),
                 split_size=(1, 2, 7, 7), la_split_size="56-28-14-7", num_heads=(2, 4, 8, 16), mlp_ratio=4.0,
                 qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, kernel_size=5,
                 attn_type="LLSS", norm="prepbn", total_step=120000, ln_eps=1e-5):
        super().__init__()
        norm_layer = make_norm(norm, total_step, ln_eps)
        if isinstance(la_split_size, str):
            la_split_size = la_split_size.split("-")
        la_split_size = [int(s) for s in la_split_size]
        self.stage1_conv_embed = nn.Sequential(nn.Conv2d(in_chans, embed_dim, 7, 4, 2), ToTokens(),
                                               norm_layer(embed_dim))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depth))]
        dim = embed_dim
        for i in range(4):
            if i > 0:
                setattr(self, f"merge{i}", MergeBlock(dim, 2 * dim, norm_layer))
                dim *= 2
            split = la_split_size[i] if attn_type[i] == "L" else split_size[i]
            cur = sum(depth[:i])
            setattr(self, f"stage{i + 1}", nn.ModuleList([
                CSWinBlock(dim, img_size // 2 ** (i + 2), num_heads[i], split, mlp_ratio, qkv_bias, drop_rate,
                           attn_drop_rate, dpr[cur + j], norm_layer, i == 3, kernel_size, attn_type[i])
                for j in range(depth[i])]))
        self.norm = norm_layer(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        x = self.stage1_conv_embed(x)
        for i in range(1, 5):
            if i > 1:
                x = getattr(self, f"merge{i - 1}")(x)
            for blk in getattr(self, f"stage{i}"):
                x = blk(x)
        return self.head(self.norm(x).mean(1))


_CSWIN = dict(embed_dim=64, split_size=(1, 2, 7, 7), la_split_size="56-28-14-7", num_heads=(2, 4, 8, 16),
              attn_type="LLSS", norm="prepbn", total_step=120000, ln_eps=1e-5)
MODELS = {
    "slab_cswin_tiny": dict(_CSWIN, depth=(2, 4, 18, 1), drop_path_rate=0.1),
    "slab_cswin_small": dict(_CSWIN, depth=(2, 4, 32, 2), drop_path_rate=0.3),
}


def create_model(name, **overrides):
    cfg = dict(MODELS[name])
    cfg.update(overrides)
    return CSWinTransformer(**cfg)

"""SLAB-Swin and Swin-RepBN in PyTorch (reference for tests)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .prepbn import make_norm


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def window_partition(x, ws):
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c)


def window_reverse(windows, ws, h, w):
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim, ws, heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1])
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b // nw, nw, self.heads, n, n) + mask[None, :, None]).view(b, self.heads, n, n)
        attn = self.attn_drop(attn.softmax(-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class SimplifiedLinearAttention(nn.Module):
    def __init__(self, dim, ws, heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, kernel_size=5):
        super().__init__()
        self.heads = heads
        d = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d)
        self.positional_encoding = nn.Parameter(torch.zeros(1, ws * ws, dim))

    def forward(self, x, mask=None):
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, c).unbind(2)
        q, k = F.relu(q), F.relu(k + self.positional_encoding)

        def split(t):
            return t.reshape(b, n, h, d).transpose(1, 2).reshape(b * h, n, d)

        # upstream's float32 core under autocast; float64 stays float64 (for conditioning checks)
        q, k, v = (split(t).float() if split(t).dtype in (torch.float16, torch.bfloat16) else split(t)
                   for t in (q, k, v))
        z = 1 / (q @ k.sum(1).unsqueeze(-1) + 1e-6)
        if 2 * n * n * d > 2 * d * d * n:
            out = q @ (k.transpose(1, 2) @ v)
        else:
            out = (q @ k.transpose(1, 2)) @ v
        out = out * z
        side = math.isqrt(n)
        fmap = v.reshape(b * h, side, side, d).permute(0, 3, 1, 2)
        out = out + self.dwc(fmap).permute(0, 2, 3, 1).reshape(b * h, n, d)
        out = out.reshape(b, h, n, d).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    def __init__(self, dim, res, heads, ws, shift, mlp_ratio, qkv_bias, drop, attn_drop, dp, attn_type, norm_layer,
                 kernel_size):
        super().__init__()
        self.res = res
        if min(res) <= ws:
            shift, ws = 0, min(res)
        self.ws, self.shift = ws, shift
        self.norm1 = norm_layer(dim)
        if attn_type == "L":
            self.attn = SimplifiedLinearAttention(dim, ws, heads, qkv_bias, attn_drop, drop, kernel_size)
        else:
            self.attn = WindowAttention(dim, ws, heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(dp) if dp > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = None
        if shift > 0:
            img = torch.zeros(1, res[0], res[1], 1)
            cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
            cnt = 0
            for hs in cuts:
                for wsl in cuts:
                    img[:, hs, wsl] = cnt
                    cnt += 1
            mw = window_partition(img, ws).view(-1, ws * ws)
            mask = mw.unsqueeze(1) - mw.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        self.register_buffer("attn_mask", mask)

    def forward(self, x):
        h, w = self.res
        b, n, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = self.attn(window_partition(y, self.ws).view(-1, self.ws * self.ws, c), self.attn_mask)
        y = window_reverse(y.view(-1, self.ws, self.ws, c), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + self.drop_path(y.reshape(b, n, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    def __init__(self, res, dim, norm_layer):
        super().__init__()
        self.res = res
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x):
        h, w = self.res
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    def __init__(self, dim, res, depth, heads, ws, mlp_ratio, qkv_bias, drop, attn_drop, dprs, attn_type, norm_layer,
                 kernel_size, downsample):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock(dim, res, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio, qkv_bias, drop, attn_drop,
                      dprs[i], attn_type, norm_layer, kernel_size) for i in range(depth)])
        self.downsample = PatchMerging(res, dim, norm_layer) if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, dim, norm_layer):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.norm = norm_layer(dim)

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, attn_type="SSSS", norm="repbn", total_step=60000,
                 ln_eps=1e-5, kernel_size=5):
        super().__init__()
        norm_layer = make_norm(norm, total_step, ln_eps)
        n = len(depths)
        self.num_features = embed_dim * 2 ** (n - 1)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        grid = img_size // patch_size
        self.layers = nn.ModuleList()
        for i in range(n):
            ws = window_size if attn_type[i] == "L" else (7 if window_size <= 56 else 12)
            self.layers.append(BasicLayer(
                embed_dim * 2 ** i, (grid // 2 ** i, grid // 2 ** i), depths[i], num_heads[i], ws, mlp_ratio,
                qkv_bias, drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])], attn_type[i],
                norm_layer, kernel_size, i < n - 1))
        self.norm = norm_layer(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        x = self.avgpool(self.norm(x).transpose(1, 2)).flatten(1)
        return self.head(x)


_SLAB = dict(window_size=56, attn_type="LLSS", norm="prepbn", total_step=60000, ln_eps=1e-5)
MODELS = {
    "slab_swin_tiny": dict(_SLAB, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "slab_swin_small": dict(_SLAB, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "slab_swin_base": dict(_SLAB, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    "swin_tiny_prepbn": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                             attn_type="SSSS", norm="repbn", drop_path_rate=0.1),
}


def create_model(name, **overrides):
    cfg = dict(MODELS[name])
    cfg.update(overrides)
    return SwinTransformer(**cfg)

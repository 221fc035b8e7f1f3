"""SLAB-CSwin (upstream ``slab_cswin.py``): CSWin Transformer with PRepBN and SLA.

A block projects ``qkv`` once and splits the channels into two branches that attend within
horizontal and vertical stripes (``split_size`` wide), or one branch over the whole map when
the stripe covers it (``last_stage``). Per-stage ``attn_type``: 'L' = SLA in stripes of
``la_split_size`` (56-28-14-7: global in stages 1-2 at 224 input), 'S' = CSWin's LePE softmax
attention in stripes of ``split_size``. Both add LePE, a 3x3 depthwise conv (``get_v``) of v
within each stripe.

Cells are registered in the order of the PyTorch modules and parameters keep the PyTorch
names, so the state-dict layout is upstream's (shared/reference/checkpoints).
"""
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ..layers.common import (DropPath, Mlp, chunk_last, drop_path_rates, init_weights_trunc_normal,
                             no_weight_decay_names, shared_graph)
from ..layers.prepbn import build_norm
from ..layers.reparam import fold_norm, fold_norm_into, is_foldable
from ..layers.sla import merge_heads, prefer_kv_first, sla_heads, split_heads, token_map_conv
from .registry import build_registered, overrides_from_defaults, register_inferer, register_model


def stripe_shape(resolution, split_size, idx):
    """(H_sp, W_sp) of branch ``idx``: -1 the whole map, 0 vertical stripes, 1 horizontal."""
    if idx == -1:
        return resolution, resolution
    return (resolution, split_size) if idx == 0 else (split_size, resolution)


class StripeAttentionBase(nn.Cell):
    """Partition (B, H*W, C) tokens into (B * stripes, H_sp * W_sp, C) and back (row-major)."""

    def __init__(self, dim, resolution, idx, split_size, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.resolution = resolution
        self.num_heads = num_heads
        self.h_sp, self.w_sp = stripe_shape(resolution, split_size, idx)
        if resolution % self.h_sp or resolution % self.w_sp:
            raise ValueError(f"stage resolution {resolution} is not divisible by the stripe {self.h_sp}x{self.w_sp}")

    def _partition(self, x):
        r, hs, ws = self.resolution, self.h_sp, self.w_sp
        if hs == r and ws == r:  # one stripe covers the map (global SLA stages, the last stage)
            return x
        c = x.shape[-1]
        x = x.reshape(-1, r // hs, hs, r // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, hs * ws, c)

    def _reverse(self, x):
        r, hs, ws = self.resolution, self.h_sp, self.w_sp
        if hs == r and ws == r:
            return x
        c = x.shape[-1]
        x = x.reshape(-1, r // hs, r // ws, hs, ws, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, r * r, c)

    def _lepe(self, v):
        """LePE: the 3x3 depthwise ``get_v`` conv of v within each stripe (zero-padded at its border)."""
        return token_map_conv(self.get_v, v, self.h_sp, self.w_sp)


class LePEAttention(StripeAttentionBase):
    """CSWin's softmax attention within stripes plus LePE (upstream ``LePEAttention``)."""

    @shared_graph
    def __init__(self, dim, resolution, idx, split_size, num_heads, attn_drop=0.0):
        super().__init__(dim, resolution, idx, split_size, num_heads)
        self.scale = (dim // num_heads) ** -0.5
        self.get_v = nn.Conv2d(dim, dim, 3, pad_mode="pad", padding=1, group=dim, has_bias=True)
        self.attn_drop = nn.Dropout(p=attn_drop) if attn_drop > 0 else nn.Identity()

    def construct(self, q, k, v):
        h = self.num_heads
        q, k, v = self._partition(q), self._partition(k), self._partition(v)
        lepe = self._lepe(v)
        q, k, vh = split_heads(q, h) * self.scale, split_heads(k, h), split_heads(v, h)
        attn = self.attn_drop(ops.softmax(ops.matmul(q, k.transpose(0, 2, 1)), axis=-1))
        return self._reverse(merge_heads(ops.matmul(attn, vh), h) + lepe)


class StripeLinearAttention(StripeAttentionBase):
    """SLA within stripes plus LePE (upstream ``SimplifiedLinearAttention`` of slab_cswin.py):
    ``positional_encoding`` (1, H_sp*W_sp, C) added to k, the float32 ReLU linear core, the
    shared 5x5 ``dwc`` of v (head_dim channels) and ``get_v``'s LePE.

    Upstream also creates a ``scale`` parameter (1, 1, C) that its forward never reads; it is
    kept, frozen, so checkpoints keep their layout.
    """

    @shared_graph
    def __init__(self, dim, resolution, idx, split_size, num_heads, kernel_size=5):
        super().__init__(dim, resolution, idx, split_size, num_heads)
        n = self.h_sp * self.w_sp
        d = dim // num_heads
        self.scale = Parameter(Tensor(np.zeros((1, 1, dim), np.float32)), name="scale", requires_grad=False)
        self.positional_encoding = Parameter(Tensor(np.zeros((1, n, dim), np.float32)), name="positional_encoding")
        self.get_v = nn.Conv2d(dim, dim, 3, pad_mode="pad", padding=1, group=dim, has_bias=True)
        self.dwc = nn.Conv2d(d, d, kernel_size, pad_mode="pad", padding=kernel_size // 2, group=d, has_bias=True)
        self.kv_first = prefer_kv_first(n, n, d)

    def construct(self, q, k, v):
        q, k, v = self._partition(q), self._partition(k), self._partition(v)
        k = k + self.positional_encoding.astype(k.dtype)
        out = sla_heads(q, k, v, self.num_heads, self.h_sp, self.w_sp, self.dwc, self.kv_first)
        return self._reverse(out + self._lepe(v).astype(out.dtype))


class CSWinBlock(nn.Cell):
    """``x + proj(attention(qkv(norm1(x))))`` over one or two stripe branches, then the MLP.

    Upstream registers ``qkv`` before ``norm1`` and applies no dropout after ``proj``.
    """

    def __init__(self, dim, resolution, num_heads, split_size, mlp_ratio, qkv_bias, drop, attn_drop, drop_path,
                 attn_type, norm, total_step, ln_eps, kernel_size, last_stage=False):
        super().__init__()
        self.dim = dim
        self.resolution = resolution
        self.qkv = nn.Dense(dim, dim * 3, has_bias=qkv_bias)
        self.norm1 = build_norm(norm, dim, total_step, ln_eps)
        last_stage = last_stage or resolution == split_size
        self.branch_num = 1 if last_stage else 2
        self.proj = nn.Dense(dim, dim)
        if attn_type == "L":
            make = lambda d, idx, h: StripeLinearAttention(d, resolution, idx, split_size, h, kernel_size)  # noqa
        elif attn_type == "S":
            make = lambda d, idx, h: LePEAttention(d, resolution, idx, split_size, h, attn_drop)  # noqa
        else:
            raise ValueError(f"attention type must be 'L' (SLA) or 'S' (LePE softmax), got {attn_type!r}")
        if last_stage:
            self.attns = nn.CellList([make(dim, -1, num_heads)])
        else:
            if dim % 2 or num_heads % 2:
                raise ValueError(f"two stripe branches need an even dim and head count, got {dim}, {num_heads}")
            self.attns = nn.CellList([make(dim // 2, i, num_heads // 2) for i in range(2)])
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.norm2 = build_norm(norm, dim, total_step, ln_eps)

    def reparameterize(self):
        """norm1 feeds only ``qkv`` (stripe partitions move whole tokens); norm2 only ``fc1``."""
        if fold_norm_into(self.norm1, self, ("qkv",)):
            self.norm1 = nn.Identity()
        if fold_norm_into(self.norm2, self.mlp, ("fc1",)):
            self.norm2 = nn.Identity()

    def construct(self, x):
        b, n, c = x.shape
        q, k, v = chunk_last(self.qkv(self.norm1(x)), 3)
        if self.branch_num == 2:
            half = c // 2
            x1 = self.attns[0](q[:, :, :half], k[:, :, :half], v[:, :, :half])
            x2 = self.attns[1](q[:, :, half:], k[:, :, half:], v[:, :, half:])
            attended = ops.concat((x1, x2), axis=2)
        else:
            attended = self.attns[0](q, k, v)
        x = x + self.drop_path(self.proj(attended))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokensFromMap(nn.Cell):
    """(B, C, H, W) -> (B, H*W, C)."""

    def construct(self, x):
        return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)


class MergeBlock(nn.Cell):
    """Downsampling between stages: 3x3 stride-2 conv (padding 1) on the token map, then the norm."""

    def __init__(self, dim, dim_out, resolution, norm, total_step, ln_eps):
        super().__init__()
        self.resolution = resolution
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, pad_mode="pad", padding=1, has_bias=True)
        self.norm = build_norm(norm, dim_out, total_step, ln_eps)
        self.to_tokens = TokensFromMap()

    def reparameterize(self):
        """The norm acts on the conv's output channels: exact although the conv pads its input."""
        if is_foldable(self.norm):
            self.conv = fold_norm(self.norm, self.conv, "after")
            self.norm = nn.Identity()

    def construct(self, x):
        r = self.resolution
        x = x.reshape(-1, r, r, x.shape[-1]).transpose(0, 3, 1, 2)
        return self.norm(self.to_tokens(self.conv(x)))


class CSWinTransformer(nn.Cell):
    """CSWin with a PRepBN/RepBN norm wherever a LayerNorm was and per-stage ``attn_type``.

    ``la_split_size`` (stripe widths of SLA stages, '56-28-14-7' or a list) is clipped to each
    stage's resolution, so SLA stages 1-2 stay global at any input size; at 224 this is
    upstream's behaviour exactly.
    """

    def __init__(self, img_size=224, in_chans=3, num_classes=1000, embed_dim=64, depth=(2, 4, 18, 1),
                 split_size=(1, 2, 7, 7), la_split_size="56-28-14-7", num_heads=(2, 4, 8, 16), mlp_ratio=4.0,
                 qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, attn_type="LLSS",
                 norm="prepbn", total_step=120000, ln_eps=1e-5, kernel_size=5):
        super().__init__()
        if isinstance(la_split_size, str):
            la_split_size = [int(s) for s in la_split_size.split("-")]
        if any(len(v) != 4 for v in (depth, split_size, la_split_size, num_heads, attn_type)):
            raise ValueError("depth, split_size, la_split_size, num_heads and attn_type need one entry per stage "
                             "(4 stages)")
        if img_size % 32:
            raise ValueError(f"img_size {img_size} must be divisible by 32")
        self.num_classes = num_classes
        self.img_size = img_size
        dims = [embed_dim * 2 ** i for i in range(4)]
        self.num_features = dims[-1]
        res = [img_size // 4 // 2 ** i for i in range(4)]
        self.stage1_conv_embed = nn.SequentialCell([
            nn.Conv2d(in_chans, embed_dim, 7, stride=4, pad_mode="pad", padding=2, has_bias=True),
            TokensFromMap(),
            build_norm(norm, embed_dim, total_step, ln_eps)])
        dpr = drop_path_rates(drop_path_rate, sum(depth))
        for i in range(4):
            kind = attn_type[i]
            split = min(la_split_size[i], res[i]) if kind == "L" else split_size[i]
            offset = sum(depth[:i])
            blocks = nn.CellList([
                CSWinBlock(dims[i], res[i], num_heads[i], split, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                           dpr[offset + j], kind, norm, total_step, ln_eps, kernel_size, last_stage=i == 3)
                for j in range(depth[i])])
            if i > 0:
                setattr(self, f"merge{i}", MergeBlock(dims[i - 1], dims[i], res[i - 1], norm, total_step, ln_eps))
            setattr(self, f"stage{i + 1}", blocks)
        self.norm = build_norm(norm, dims[-1], total_step, ln_eps)
        self.head = nn.Dense(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        init_weights_trunc_normal(self)

    def reparameterize(self):
        """Stem norm into the stem conv (after it: exact despite its padding); final norm into
        the head (it commutes with the token mean). Without a head the final norm stays."""
        conv, to_tokens, stem_norm = self.stage1_conv_embed[0], self.stage1_conv_embed[1], self.stage1_conv_embed[2]
        if is_foldable(stem_norm):
            self.stage1_conv_embed = nn.SequentialCell([fold_norm(stem_norm, conv, "after"), to_tokens,
                                                        nn.Identity()])
        if isinstance(self.head, nn.Dense) and is_foldable(self.norm):
            self.head = fold_norm(self.norm, self.head, "before")
            self.norm = nn.Identity()

    def no_weight_decay(self):
        """Biases, norms, alpha and SLA position encodings."""
        return no_weight_decay_names(self)

    def forward_features(self, x):
        x = self.stage1_conv_embed(x)
        for blk in self.stage1:
            x = blk(x)
        x = self.merge1(x)
        for blk in self.stage2:
            x = blk(x)
        x = self.merge2(x)
        for blk in self.stage3:
            x = blk(x)
        x = self.merge3(x)
        for blk in self.stage4:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x):
        return self.head(x.mean(axis=1))

    @property
    def feature_info(self):
        """Per stage ``chs``/``reduction``/``name`` (``features_only``, models/features.py)."""
        dim = self.stage1_conv_embed[0].out_channels
        return [dict(chs=dim * 2 ** i, reduction=4 * 2 ** i, name=f"stage{i + 1}") for i in range(4)]

    def _stage_map(self, x, i):
        r = self.img_size // 4 // 2 ** i
        return x.reshape(x.shape[0], r, r, x.shape[-1]).transpose(0, 3, 1, 2)

    def forward_stages(self, x):
        """Each stage's tokens after its blocks (before the next merge) as an NCHW map; no final norm."""
        x = self.stage1_conv_embed(x)
        for blk in self.stage1:
            x = blk(x)
        s1 = self._stage_map(x, 0)
        x = self.merge1(x)
        for blk in self.stage2:
            x = blk(x)
        s2 = self._stage_map(x, 1)
        x = self.merge2(x)
        for blk in self.stage3:
            x = blk(x)
        s3 = self._stage_map(x, 2)
        x = self.merge3(x)
        for blk in self.stage4:
            x = blk(x)
        return s1, s2, s3, self._stage_map(x, 3)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


_CSWIN = dict(embed_dim=64, split_size=(1, 2, 7, 7), la_split_size="56-28-14-7", num_heads=(2, 4, 8, 16),
              mlp_ratio=4.0, qkv_bias=True, attn_type="LLSS", norm="prepbn", total_step=120000, ln_eps=1e-5)
# Registered defaults (upstream SLAB_CSWin_64_24181_tiny_224 / _24322_small_224; SPEC sections 2 and 6).
CSWIN_DEFAULTS = {
    "slab_cswin_tiny": dict(_CSWIN, depth=(2, 4, 18, 1), drop_path_rate=0.1),
    "slab_cswin_small": dict(_CSWIN, depth=(2, 4, 32, 2), drop_path_rate=0.3),
}


@register_model
def slab_cswin_tiny(pretrained=False, **kwargs):
    """SLAB-CSwin-T: SLA in stages 1-2, LePE attention in 3-4, PRepBN over 120k steps; 82.8% top-1."""
    return build_registered(CSWinTransformer, CSWIN_DEFAULTS["slab_cswin_tiny"], pretrained, kwargs)


@register_model
def slab_cswin_small(pretrained=False, **kwargs):
    """SLAB-CSwin-S."""
    return build_registered(CSWinTransformer, CSWIN_DEFAULTS["slab_cswin_small"], pretrained, kwargs)


@register_inferer
def infer_cswin_config(shapes):
    """``(model_name, overrides)`` for a PyTorch CSwin-family state dict ``{key: shape}``, or None."""
    if "stage1_conv_embed.0.weight" not in shapes:
        return None
    embed_dim, in_chans = shapes["stage1_conv_embed.0.weight"][:2]
    depth, kinds, heads = [], "", []
    for i in range(1, 5):
        n = 0
        while f"stage{i}.{n}.qkv.weight" in shapes:
            n += 1
        if n == 0:
            return None
        depth.append(n)
        pre = f"stage{i}.0.attns."
        dim = embed_dim * 2 ** (i - 1)
        if pre + "0.positional_encoding" in shapes:
            kinds += "L"
            heads.append(dim // shapes[pre + "0.dwc.weight"][0])
        else:  # softmax heads leave no trace in the shapes (nor matter to the conversion): upstream's
            kinds += "S"
            heads.append(_CSWIN["num_heads"][i - 1] * embed_dim // _CSWIN["embed_dim"])
    # The resolution shows in a global (one-branch) SLA stage 1; otherwise assume 224 input.
    pe = shapes.get("stage1.0.attns.0.positional_encoding")
    global_stage1 = pe is not None and "stage1.0.attns.1.get_v.weight" not in shapes
    res1 = int(round(pe[1] ** 0.5)) if global_stage1 else 56
    norm = "prepbn" if "stage1_conv_embed.2.norm1.weight" in shapes else "repbn"
    cfg = dict(img_size=res1 * 4, in_chans=in_chans, embed_dim=embed_dim, depth=tuple(depth), num_heads=tuple(heads),
               attn_type=kinds, norm=norm, num_classes=shapes["head.weight"][0] if "head.weight" in shapes else 0,
               mlp_ratio=shapes["stage1.0.mlp.fc1.weight"][0] / embed_dim, qkv_bias="stage1.0.qkv.bias" in shapes)
    name = "slab_cswin_small" if tuple(depth) == CSWIN_DEFAULTS["slab_cswin_small"]["depth"] else "slab_cswin_tiny"
    return name, overrides_from_defaults(CSWinTransformer, CSWIN_DEFAULTS[name], cfg)

"""PVT with PRepBN (``pvt_*_prepbn``) and SLAB-PVT (upstream ``slab_pvt.py``).

Four stages, each a patch embedding (conv + norm), a learned ``pos_embedN`` and ``blockN``;
no final norm, the head reads the mean of the last stage's tokens.

- ``pvt_*_prepbn`` (upstream ``attn_type`` 'SSSS'): softmax attention whose keys and values
  come from a spatially reduced map (``sr`` conv with kernel = stride = ``sr_ratio``, then
  the attention's own ``norm``).
- ``slab_pvt_tiny``/``_small``/``_medium`` ('LLLL'): SLA with separate ``q``/``kv``
  projections and no spatial reduction (upstream ``PVT_LA_SR_RATIOS`` 1111). Upstream configures
  S and M (cfgs/slab_pvt_s.yaml, slab_pvt_m.yaml: the depths of PVT-S/M) but publishes no
  checkpoint for them; their layouts are tests/layouts/slab_pvt_{small,medium}.json.

Cells are registered in the order of the PyTorch modules and parameters keep the PyTorch
names, so the state-dict layout is upstream's (shared/reference/checkpoints). Upstream
interpolates ``pos_embedN`` when the input size differs from ``img_size``; SLA's position
encodings cannot follow, so only ``img_size`` inputs are supported (as for every SLA model).
"""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common import initializer as init

from ..layers.common import (DropPath, Mlp, chunk_last, drop_path_rates, graph_site, init_weights_trunc_normal,
                             no_weight_decay_names)
from ..layers.patch_embed import PatchEmbed
from ..layers.prepbn import build_norm
from ..layers.reparam import fold_norm_into
from ..layers.sla import SimplifiedLinearAttention, merge_heads, split_heads
from .registry import build_registered, overrides_from_defaults, register_inferer, register_model


class SpatialReductionAttention(nn.Cell):
    """PVT's softmax attention (upstream ``Attention``): queries from every token, keys and
    values from the map reduced by an ``sr_ratio`` x ``sr_ratio`` strided conv and a norm."""

    def __init__(self, dim, resolution, num_heads, qkv_bias, attn_drop, proj_drop, sr_ratio, norm, total_step,
                 ln_eps):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.resolution = resolution
        self.sr_ratio = sr_ratio
        self.q = nn.Dense(dim, dim, has_bias=qkv_bias)
        self.kv = nn.Dense(dim, dim * 2, has_bias=qkv_bias)
        self.attn_drop = nn.Dropout(p=attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj = nn.Dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()
        if sr_ratio > 1:
            if resolution % sr_ratio:
                raise ValueError(f"stage resolution {resolution} is not divisible by sr_ratio {sr_ratio}")
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, pad_mode="valid", has_bias=True)
            # the reduced map's tokens, not the block's: a graph apart from the block norms
            self.norm = graph_site(build_norm(norm, dim, total_step, ln_eps), "sr")

    def input_layers(self):
        """The layers reading the block's norm1: ``q``, and ``sr`` (an unpadded conv) or ``kv``."""
        return ("q", "sr") if self.sr_ratio > 1 else ("q", "kv")

    def reparameterize(self):
        """The reduction's norm feeds only ``kv``."""
        if self.sr_ratio > 1 and fold_norm_into(self.norm, self, ("kv",)):
            self.norm = nn.Identity()

    def construct(self, x):
        b, n, c = x.shape
        h = self.num_heads
        q = split_heads(self.q(x), h)
        if self.sr_ratio > 1:
            r = self.resolution
            reduced = self.sr(x.transpose(0, 2, 1).reshape(-1, c, r, r))
            x = self.norm(reduced.reshape(b, c, -1).transpose(0, 2, 1))
        k, v = chunk_last(self.kv(x), 2)
        k, v = split_heads(k, h), split_heads(v, h)
        attn = ops.softmax(ops.matmul(q, k.transpose(0, 2, 1)) * self.scale, axis=-1)
        x = merge_heads(ops.matmul(self.attn_drop(attn), v), h)
        return self.proj_drop(self.proj(x))


class Block(nn.Cell):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim, resolution, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, attn_type,
                 sr_ratio, norm, total_step, ln_eps, kernel_size):
        super().__init__()
        self.norm1 = build_norm(norm, dim, total_step, ln_eps)
        if attn_type == "L":
            if sr_ratio != 1:
                raise ValueError("SLA with spatial reduction is not implemented (SLAB-PVT uses none: "
                                 "la_sr_ratios 1111)")
            self.attn = SimplifiedLinearAttention(dim, resolution * resolution, num_heads, qkv_bias=qkv_bias,
                                                  proj_drop=drop, kernel_size=kernel_size, separate_kv=True)
        elif attn_type == "S":
            self.attn = SpatialReductionAttention(dim, resolution, num_heads, qkv_bias, attn_drop, drop, sr_ratio,
                                                  norm, total_step, ln_eps)
        else:
            raise ValueError(f"attention type must be 'L' (SLA) or 'S' (softmax), got {attn_type!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = build_norm(norm, dim, total_step, ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def reparameterize(self):
        """norm1 feeds the query projection and the key/value path (``kv``, or the unpadded
        ``sr`` conv, where the fold is exact too); norm2 feeds ``fc1``."""
        if fold_norm_into(self.norm1, self.attn, self.attn.input_layers()):
            self.norm1 = nn.Identity()
        if fold_norm_into(self.norm2, self.mlp, ("fc1",)):
            self.norm2 = nn.Identity()

    def construct(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PyramidVisionTransformer(nn.Cell):
    """PVT with a PRepBN/RepBN norm wherever a LayerNorm was, per-stage ``attn_type``."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dims=(64, 128, 320, 512),
                 num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.0, depths=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1), la_sr_ratios="1111",
                 attn_type="SSSS", norm="prepbn", total_step=300000, ln_eps=1e-6, kernel_size=5):
        super().__init__()
        stages = (embed_dims, num_heads, mlp_ratios, depths, sr_ratios, str(la_sr_ratios), attn_type)
        if any(len(v) != 4 for v in stages):
            raise ValueError("embed_dims, num_heads, mlp_ratios, depths, sr_ratios, la_sr_ratios and attn_type "
                             "need one entry per stage (4 stages)")
        if img_size % (patch_size * 8):
            raise ValueError(f"img_size {img_size} must be divisible by patch_size * 8 = {patch_size * 8}")
        self.num_classes = num_classes
        self.num_features = embed_dims[-1]
        self.img_size = img_size
        grid = img_size // patch_size
        self.grids = [grid // 2 ** i for i in range(4)]
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        cur = 0
        for i in range(4):
            kind = attn_type[i]
            sr = sr_ratios[i] if kind == "S" else int(str(la_sr_ratios)[i])
            embed = PatchEmbed(img_size if i == 0 else self.grids[i - 1], patch_size if i == 0 else 2,
                               in_chans if i == 0 else embed_dims[i - 1], embed_dims[i], norm, total_step, ln_eps)
            pos = Parameter(init.initializer(init.TruncatedNormal(0.02), (1, self.grids[i] ** 2, embed_dims[i]),
                                             ms.float32), name=f"pos_embed{i + 1}")
            blocks = nn.CellList([
                Block(embed_dims[i], self.grids[i], num_heads[i], mlp_ratios[i], qkv_bias, drop_rate, attn_drop_rate,
                      dpr[cur + j], kind, sr, norm, total_step, ln_eps, kernel_size) for j in range(depths[i])])
            cur += depths[i]
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"pos_embed{i + 1}", pos)
            setattr(self, f"block{i + 1}", blocks)
        self.pos_drop = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Dense(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        init_weights_trunc_normal(self)

    def no_weight_decay(self):
        """Biases, norms, alpha, ``pos_embedN`` and SLA position encodings."""
        return no_weight_decay_names(self)

    def _to_map(self, x, i):
        """(B, N, C) tokens of stage ``i`` -> (B, C, H, W) for the next patch embedding."""
        g = self.grids[i]
        return x.reshape(-1, g, g, x.shape[-1]).transpose(0, 3, 1, 2)

    def forward_features(self, x):
        x = self.pos_drop(self.patch_embed1(x) + self.pos_embed1.astype(x.dtype))
        for blk in self.block1:
            x = blk(x)
        x = self.pos_drop(self.patch_embed2(self._to_map(x, 0)) + self.pos_embed2.astype(x.dtype))
        for blk in self.block2:
            x = blk(x)
        x = self.pos_drop(self.patch_embed3(self._to_map(x, 1)) + self.pos_embed3.astype(x.dtype))
        for blk in self.block3:
            x = blk(x)
        x = self.pos_drop(self.patch_embed4(self._to_map(x, 2)) + self.pos_embed4.astype(x.dtype))
        for blk in self.block4:
            x = blk(x)
        return x

    def forward_head(self, x):
        return self.head(x.mean(axis=1))

    @property
    def feature_info(self):
        """Per stage ``chs``/``reduction``/``name`` (``features_only``, models/features.py)."""
        reduction = self.img_size // self.grids[0]
        return [dict(chs=int(getattr(self, f"pos_embed{i + 1}").shape[-1]), reduction=reduction * 2 ** i,
                     name=f"block{i + 1}") for i in range(4)]

    def forward_stages(self, x):
        """Each stage's tokens after its blocks as an NCHW map (what the next patch embedding reads)."""
        x = self.pos_drop(self.patch_embed1(x) + self.pos_embed1.astype(x.dtype))
        for blk in self.block1:
            x = blk(x)
        s1 = self._to_map(x, 0)
        x = self.pos_drop(self.patch_embed2(s1) + self.pos_embed2.astype(x.dtype))
        for blk in self.block2:
            x = blk(x)
        s2 = self._to_map(x, 1)
        x = self.pos_drop(self.patch_embed3(s2) + self.pos_embed3.astype(x.dtype))
        for blk in self.block3:
            x = blk(x)
        s3 = self._to_map(x, 2)
        x = self.pos_drop(self.patch_embed4(s3) + self.pos_embed4.astype(x.dtype))
        for blk in self.block4:
            x = blk(x)
        return s1, s2, s3, self._to_map(x, 3)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


_PVT = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
            qkv_bias=True, sr_ratios=(8, 4, 2, 1), norm="prepbn", total_step=300000, ln_eps=1e-6)
# Registered defaults (shared/reference/checkpoints, SPEC sections 2 and 6, upstream cfgs).
PVT_DEFAULTS = {
    "pvt_tiny_prepbn": dict(_PVT, depths=(2, 2, 2, 2), attn_type="SSSS", drop_path_rate=0.0),
    "pvt_small_prepbn": dict(_PVT, depths=(3, 4, 6, 3), attn_type="SSSS", drop_path_rate=0.1),
    "pvt_medium_prepbn": dict(_PVT, depths=(3, 4, 18, 3), attn_type="SSSS", drop_path_rate=0.3),
    "slab_pvt_tiny": dict(_PVT, depths=(2, 2, 2, 2), attn_type="LLLL", la_sr_ratios="1111", drop_path_rate=0.0),
    "slab_pvt_small": dict(_PVT, depths=(3, 4, 6, 3), attn_type="LLLL", la_sr_ratios="1111", drop_path_rate=0.1),
    "slab_pvt_medium": dict(_PVT, depths=(3, 4, 18, 3), attn_type="LLLL", la_sr_ratios="1111", drop_path_rate=0.3),
}


@register_model
def pvt_tiny_prepbn(pretrained=False, **kwargs):
    """PVT-T with PRepBN over 300k steps; 76.0% top-1."""
    return build_registered(PyramidVisionTransformer, PVT_DEFAULTS["pvt_tiny_prepbn"], pretrained, kwargs)


@register_model
def pvt_small_prepbn(pretrained=False, **kwargs):
    """PVT-S with PRepBN; 80.1% top-1."""
    return build_registered(PyramidVisionTransformer, PVT_DEFAULTS["pvt_small_prepbn"], pretrained, kwargs)


@register_model
def pvt_medium_prepbn(pretrained=False, **kwargs):
    """PVT-M with PRepBN; 81.7% top-1."""
    return build_registered(PyramidVisionTransformer, PVT_DEFAULTS["pvt_medium_prepbn"], pretrained, kwargs)


@register_model
def slab_pvt_tiny(pretrained=False, **kwargs):
    """SLAB-PVT-T: SLA in every stage, no spatial reduction, PRepBN; 76.5% top-1."""
    return build_registered(PyramidVisionTransformer, PVT_DEFAULTS["slab_pvt_tiny"], pretrained, kwargs)


@register_model
def slab_pvt_small(pretrained=False, **kwargs):
    """SLAB-PVT-S: PVT-S depths, SLA in every stage, PRepBN; configured upstream, no published weights."""
    return build_registered(PyramidVisionTransformer, PVT_DEFAULTS["slab_pvt_small"], pretrained, kwargs)


@register_model
def slab_pvt_medium(pretrained=False, **kwargs):
    """SLAB-PVT-M: PVT-M depths, SLA in every stage, PRepBN; configured upstream, no published weights."""
    return build_registered(PyramidVisionTransformer, PVT_DEFAULTS["slab_pvt_medium"], pretrained, kwargs)


@register_inferer
def infer_pvt_config(shapes):
    """``(model_name, overrides)`` for a PyTorch PVT-family state dict ``{key: shape}``, or None."""
    if "patch_embed1.proj.weight" not in shapes or "pos_embed4" not in shapes:
        return None
    if "patch_embed1.norm.norm1.weight" in shapes:
        norm = "prepbn"
    elif "patch_embed1.norm.alpha" in shapes:
        norm = "repbn"
    else:
        return None
    _, in_chans, patch_size = shapes["patch_embed1.proj.weight"][:3]
    dims, depths, heads, ratios, kinds, srs = [], [], [], [], "", []
    for i in range(1, 5):
        dims.append(shapes[f"pos_embed{i}"][2])
        depth = 0
        while f"block{i}.{depth}.mlp.fc1.weight" in shapes:
            depth += 1
        if depth == 0:
            return None
        depths.append(depth)
        ratios.append(shapes[f"block{i}.0.mlp.fc1.weight"][0] / dims[-1])
        pre = f"block{i}.0.attn."
        if pre + "positional_encoding" in shapes:
            kinds += "L"
            heads.append(dims[-1] // shapes[pre + "dwc.weight"][0])
            srs.append(1)
        else:  # softmax heads leave no trace in the shapes (nor matter to the conversion): upstream's
            kinds += "S"
            heads.append(_PVT["num_heads"][i - 1] if dims[-1] == _PVT["embed_dims"][i - 1] else 1)
            srs.append(shapes[pre + "sr.weight"][2] if pre + "sr.weight" in shapes else 1)
    grid = int(round(shapes["pos_embed1"][1] ** 0.5))
    cfg = dict(img_size=grid * patch_size, patch_size=patch_size, in_chans=in_chans, embed_dims=tuple(dims),
               depths=tuple(depths), num_heads=tuple(heads), mlp_ratios=tuple(ratios), attn_type=kinds, norm=norm,
               num_classes=shapes["head.weight"][0] if "head.weight" in shapes else 0,
               qkv_bias="block1.0.attn.q.bias" in shapes)
    if "S" in kinds:
        cfg["sr_ratios"] = tuple(srs)
    name = "slab_pvt_tiny" if kinds == "LLLL" else "pvt_tiny_prepbn"
    for candidate, defaults in PVT_DEFAULTS.items():
        if (tuple(defaults["depths"]), defaults["attn_type"]) == (tuple(depths), kinds):
            name = candidate
            break
    return name, overrides_from_defaults(PyramidVisionTransformer, PVT_DEFAULTS[name], cfg)

"""DeiT with RepBN/PRepBN (upstream ``deit.py``) and SLAB-DeiT with SLA (upstream ``slab_deit.py``).

- ``deit_*_prepbn``: softmax attention, a class token, the head reads token 0.
- ``slab_deit_*``: SLA over all patch tokens, no class token in the forward (upstream keeps
  the ``cls_token`` parameter in the checkpoint but never uses it), the head reads the mean
  of the tokens; ``pos_embed`` has one entry per patch.

Cells are registered in the order of the PyTorch modules and parameters keep the PyTorch
names, so the state-dict layout is upstream's (shared/reference/checkpoints).
"""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common import initializer as init

from ..layers.common import (DropPath, Mlp, chunk_last, drop_path_rates, init_weights_trunc_normal,
                             no_weight_decay_names, shared_graph)
from ..layers.patch_embed import PatchEmbed
from ..layers.prepbn import build_norm
from ..layers.reparam import fold_norm, fold_norm_into, is_foldable
from ..layers.sla import SimplifiedLinearAttention, merge_heads, split_heads
from .registry import build_registered, overrides_from_defaults, register_inferer, register_model


class Attention(nn.Cell):
    """ViT multi-head softmax attention: one ``qkv`` Dense, scale ``head_dim ** -0.5``."""

    @shared_graph
    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Dense(dim, dim * 3, has_bias=qkv_bias)
        self.attn_drop = nn.Dropout(p=attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj = nn.Dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()

    def input_layers(self):
        return ("qkv",)

    def construct(self, x):
        h = self.num_heads
        q, k, v = chunk_last(self.qkv(x), 3)
        q, k, v = split_heads(q, h), split_heads(k, h), split_heads(v, h)
        attn = ops.softmax(ops.matmul(q, k.transpose(0, 2, 1)) * self.scale, axis=-1)
        x = merge_heads(ops.matmul(self.attn_drop(attn), v), h)
        return self.proj_drop(self.proj(x))


class Block(nn.Cell):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim, num_tokens, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, attn_type, norm,
                 total_step, ln_eps, kernel_size):
        super().__init__()
        self.norm1 = build_norm(norm, dim, total_step, ln_eps)
        if attn_type == "L":
            self.attn = SimplifiedLinearAttention(dim, num_tokens, num_heads, qkv_bias=qkv_bias, proj_drop=drop,
                                                  kernel_size=kernel_size)
        elif attn_type == "S":
            self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        else:
            raise ValueError(f"attention type must be 'L' (SLA) or 'S' (softmax), got {attn_type!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = build_norm(norm, dim, total_step, ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def reparameterize(self):
        """norm1 feeds only the attention's ``qkv``; norm2 only ``fc1``."""
        if fold_norm_into(self.norm1, self.attn, self.attn.input_layers()):
            self.norm1 = nn.Identity()
        if fold_norm_into(self.norm2, self.mlp, ("fc1",)):
            self.norm2 = nn.Identity()

    def construct(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Cell):
    """DeiT/ViT with a PRepBN/RepBN norm wherever a LayerNorm was.

    ``attn_type`` 'S' (softmax) or 'L' (SLA, over the patch tokens only: it needs a square
    token grid, so SLA models have ``class_token=False``); ``global_pool`` 'token' (head on
    the class token) or 'avg' (mean of the tokens).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 attn_type="S", norm="repbn", total_step=300000, ln_eps=1e-6, kernel_size=5, class_token=True,
                 global_pool="token"):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be divisible by patch_size {patch_size}")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if attn_type == "L" and class_token:
            raise ValueError("SLA needs a square token grid: use class_token=False with attn_type 'L'")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.class_token = class_token
        self.global_pool = global_pool
        self.img_size = img_size
        num_patches = (img_size // patch_size) ** 2
        # The cls_token is part of upstream's checkpoint even where the forward ignores it
        # (SLAB-DeiT); there it is kept frozen so the optimizer does not carry it.
        self.cls_token = Parameter(init.initializer(init.TruncatedNormal(0.02), (1, 1, embed_dim), ms.float32),
                                   name="cls_token", requires_grad=class_token)
        self.pos_embed = Parameter(init.initializer(init.TruncatedNormal(0.02),
                                                    (1, num_patches + int(class_token), embed_dim), ms.float32),
                                   name="pos_embed")
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, None, total_step, ln_eps)
        self.pos_drop = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.CellList([
            Block(embed_dim, num_patches, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i],
                  attn_type, norm, total_step, ln_eps, kernel_size) for i in range(depth)])
        self.norm = build_norm(norm, embed_dim, total_step, ln_eps)
        self.head = nn.Dense(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        init_weights_trunc_normal(self)

    def reparameterize(self):
        """The final norm acts per token, so it commutes with taking token 0 or the token mean
        and folds into the head. Without a head (num_classes=0) it stays."""
        if isinstance(self.head, nn.Dense) and is_foldable(self.norm):
            self.head = fold_norm(self.norm, self.head, "before")
            self.norm = nn.Identity()

    def no_weight_decay(self):
        """Biases, norms, alpha, ``pos_embed``, ``cls_token`` and SLA position encodings."""
        return no_weight_decay_names(self)

    def forward_features(self, x):
        x = self.patch_embed(x)
        if self.class_token:
            cls = ops.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, self.embed_dim))
            x = ops.concat((cls, x), axis=1)
        x = self.pos_drop(x + self.pos_embed.astype(x.dtype))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x):
        x = x.mean(axis=1) if self.global_pool == "avg" else x[:, 0]
        return self.head(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


_DEIT = dict(patch_size=16, depth=12, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0, ln_eps=1e-6)
_SLAB_DEIT = dict(_DEIT, attn_type="L", norm="prepbn", total_step=60000, class_token=False, global_pool="avg")
# Registered defaults (shared/reference/checkpoints and SPEC sections 2 and 6).
DEIT_DEFAULTS = {
    "deit_tiny_prepbn": dict(_DEIT, embed_dim=192, num_heads=3, attn_type="S", norm="repbn"),
    "deit_small_prepbn": dict(_DEIT, embed_dim=384, num_heads=6, attn_type="S", norm="prepbn", total_step=300000),
    "slab_deit_tiny": dict(_SLAB_DEIT, embed_dim=192, num_heads=3),
    "slab_deit_small": dict(_SLAB_DEIT, embed_dim=384, num_heads=6),
}


@register_model
def deit_tiny_prepbn(pretrained=False, **kwargs):
    """DeiT-T with plain RepBN (no LayerNorm schedule); 73.6% top-1."""
    return build_registered(VisionTransformer, DEIT_DEFAULTS["deit_tiny_prepbn"], pretrained, kwargs)


@register_model
def deit_small_prepbn(pretrained=False, **kwargs):
    """DeiT-S with PRepBN over 300k steps; 80.2% top-1."""
    return build_registered(VisionTransformer, DEIT_DEFAULTS["deit_small_prepbn"], pretrained, kwargs)


@register_model
def slab_deit_tiny(pretrained=False, **kwargs):
    """SLAB-DeiT-T: SLA, PRepBN over 60k steps, mean pooling; 74.3% top-1."""
    return build_registered(VisionTransformer, DEIT_DEFAULTS["slab_deit_tiny"], pretrained, kwargs)


@register_model
def slab_deit_small(pretrained=False, **kwargs):
    """SLAB-DeiT-S; 80.0% top-1."""
    return build_registered(VisionTransformer, DEIT_DEFAULTS["slab_deit_small"], pretrained, kwargs)


@register_inferer
def infer_deit_config(shapes):
    """``(model_name, overrides)`` for a PyTorch DeiT-family state dict ``{key: shape}``, or None."""
    if "cls_token" not in shapes or "blocks.0.mlp.fc1.weight" not in shapes:
        return None
    embed_dim, in_chans, patch_size = shapes["patch_embed.proj.weight"][:3]
    depth = 0
    while f"blocks.{depth}.mlp.fc1.weight" in shapes:
        depth += 1
    sla = "blocks.0.attn.positional_encoding" in shapes
    if "blocks.0.norm1.norm1.weight" in shapes:
        norm = "prepbn"
    elif "blocks.0.norm1.alpha" in shapes:
        norm = "repbn"
    else:
        return None
    num_tokens = shapes["pos_embed"][1] - (0 if sla else 1)
    side = int(round(num_tokens ** 0.5))
    cfg = dict(img_size=side * patch_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
               depth=depth, num_classes=shapes["head.weight"][0] if "head.weight" in shapes else 0,
               mlp_ratio=shapes["blocks.0.mlp.fc1.weight"][0] / embed_dim,
               qkv_bias="blocks.0.attn.qkv.bias" in shapes)
    if sla:
        cfg["num_heads"] = embed_dim // shapes["blocks.0.attn.dwc.weight"][0]
        name = "slab_deit_small" if embed_dim == 384 else "slab_deit_tiny"
    else:  # softmax heads leave no trace in the shapes (nor matter to the conversion): a guess
        cfg["num_heads"] = {192: 3, 384: 6}.get(embed_dim, max(1, embed_dim // 64))
        name = "deit_small_prepbn" if norm == "prepbn" else "deit_tiny_prepbn"
    return name, overrides_from_defaults(VisionTransformer, DEIT_DEFAULTS[name], dict(cfg, norm=norm))

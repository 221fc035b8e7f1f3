"""Swin Transformer with PRepBN/RepBN and SLA: SLAB-Swin (upstream ``SlabSwinTransformer``)
and Swin-RepBN (upstream ``SwinTransformer`` with ``norm_layer=RepBN``).

Cells are registered in the order of the PyTorch modules and parameters keep the PyTorch
names, so the state-dict layout is the upstream one (shared/reference/checkpoints).
Tensors that upstream keeps as buffers but the model can compute (``relative_position_index``,
``attn_mask``) are constants here and reported by ``torch_buffers()`` for the converter.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common import initializer as init

from ..layers.common import (DropPath, Mlp, check_gelu, chunk_last, drop_path_rates, init_weights_trunc_normal,
                             no_weight_decay_names, graph_site, shared_graph)
from ..layers.patch_embed import PatchEmbed
from ..layers.prepbn import build_norm
from ..layers.reparam import fold_norm, fold_norm_into, is_foldable
from ..layers.sla import SimplifiedLinearAttention
from .registry import build_registered, overrides_from_defaults, register_inferer, register_model


def relative_position_index(window_size):
    """Swin's (N, N) index into the (2w-1)^2 relative position bias table, N = w*w."""
    coords = np.stack(np.meshgrid(np.arange(window_size), np.arange(window_size), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window_size - 1)
    return (rel[:, :, 0] * (2 * window_size - 1) + rel[:, :, 1]).astype(np.int64)


def window_partition_np(x, window_size):
    b, h, w, c = x.shape
    x = x.reshape(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def shifted_window_mask(resolution, window_size, shift_size):
    """The (nW, N, N) mask of shifted-window attention: 0 within a region, -100 across."""
    h, w = resolution
    img = np.zeros((1, h, w, 1), np.float32)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    region = 0
    for hs in cuts:
        for ws in cuts:
            img[:, hs, ws, :] = region
            region += 1
    windows = window_partition_np(img, window_size).reshape(-1, window_size * window_size)
    diff = windows[:, None, :] - windows[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0)).astype(np.float32)


def roll_hw(x, shift):
    """``torch.roll(x, (shift, shift), dims=(1, 2))`` on (B, H, W, C) by slicing (portable to CPU)."""
    h, w = x.shape[1], x.shape[2]
    sh, sw = shift % h, shift % w
    x = ops.concat((x[:, h - sh:], x[:, :h - sh]), axis=1)
    return ops.concat((x[:, :, w - sw:], x[:, :, :w - sw]), axis=2)


class WindowAttention(nn.Cell):
    """Swin's window softmax attention with a relative position bias and an optional -100 mask."""

    @shared_graph
    def __init__(self, dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = Parameter(
            init.initializer(init.TruncatedNormal(0.02), ((2 * window_size - 1) ** 2, num_heads), ms.float32),
            name="relative_position_bias_table")
        self._relative_position_index = relative_position_index(window_size)
        self.relative_position_index = Tensor(self._relative_position_index.reshape(-1).astype(np.int32))
        self.qkv = nn.Dense(dim, dim * 3, has_bias=qkv_bias)
        self.attn_drop = nn.Dropout(p=attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj = nn.Dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()

    def torch_buffers(self):
        return {"relative_position_index": self._relative_position_index}

    def construct(self, x, mask=None):
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = chunk_last(self.qkv(x), 3)
        q = q.reshape(b, n, h, c // h).transpose(0, 2, 1, 3) * self.scale
        k = k.reshape(b, n, h, c // h).transpose(0, 2, 1, 3)
        v = v.reshape(b, n, h, c // h).transpose(0, 2, 1, 3)
        attn = ops.matmul(q, k.transpose(0, 1, 3, 2))
        bias = ops.gather(self.relative_position_bias_table, self.relative_position_index, 0)
        attn = attn + bias.reshape(n, n, h).transpose(2, 0, 1).expand_dims(0).astype(attn.dtype)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(b // nw, nw, h, n, n) + mask.expand_dims(1).expand_dims(0).astype(attn.dtype)
            attn = attn.reshape(b, h, n, n)
        attn = self.attn_drop(ops.softmax(attn, axis=-1))
        x = ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class SwinBlock(nn.Cell):
    """Pre-norm block: ``x + attn(norm1(x))`` over (shifted) windows, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim, input_resolution, num_heads, window_size, shift_size, mlp_ratio, qkv_bias, drop,
                 attn_drop, drop_path, attn_type, norm, total_step, ln_eps, kernel_size, gelu="exact"):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(input_resolution) <= window_size:  # no partition when the window covers the map
            shift_size = 0
            window_size = min(input_resolution)
        if input_resolution[0] % window_size or input_resolution[1] % window_size:
            raise ValueError(f"stage resolution {tuple(input_resolution)} is not divisible by window size "
                             f"{window_size}; choose an img_size that fits the windows")
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.attn_type = attn_type
        self.norm1 = build_norm(norm, dim, total_step, ln_eps)
        if attn_type == "L":
            self.attn = SimplifiedLinearAttention(dim, window_size * window_size, num_heads, qkv_bias=qkv_bias,
                                                  attn_drop=attn_drop, proj_drop=drop, kernel_size=kernel_size)
        elif attn_type == "S":
            self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                        proj_drop=drop)
        else:
            raise ValueError(f"attention type must be 'L' (SLA) or 'S' (softmax), got {attn_type!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = build_norm(norm, dim, total_step, ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, gelu=gelu)
        if shift_size > 0:
            self._attn_mask = shifted_window_mask(self.input_resolution, window_size, shift_size)
            self.attn_mask = Tensor(self._attn_mask)
            graph_site(self.attn, "masked")   # called with a mask, the unshifted blocks' with None
        else:
            self._attn_mask = None
            self.attn_mask = None

    def torch_buffers(self):
        return {} if self._attn_mask is None else {"attn_mask": self._attn_mask}

    def reparameterize(self):
        """norm1 feeds only the attention's qkv projection (window partition and the cyclic
        shift move whole tokens, which a per-channel affine commutes with); norm2 feeds fc1."""
        if fold_norm_into(self.norm1, self.attn, ("qkv",)):
            self.norm1 = nn.Identity()
        if is_foldable(self.norm2):
            self.mlp.fc1 = fold_norm(self.norm2, self.mlp.fc1, "before")
            self.norm2 = nn.Identity()

    def _partition(self, x):
        b, h, w, c = x.shape
        ws = self.window_size
        if ws == h and ws == w:
            return x.reshape(b, h * w, c)
        x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, ws * ws, c)

    def _reverse(self, windows, b):
        h, w = self.input_resolution
        ws = self.window_size
        c = windows.shape[-1]
        if ws == h and ws == w:
            return windows.reshape(b, h, w, c)
        x = windows.reshape(b, h // ws, w // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, c)

    def construct(self, x):
        h, w = self.input_resolution
        b, length, c = x.shape
        shortcut = x
        x = self.norm1(x).reshape(b, h, w, c)
        if self.shift_size > 0:
            x = roll_hw(x, -self.shift_size)
        x = self.attn(self._partition(x), self.attn_mask)
        x = self._reverse(x, b)
        if self.shift_size > 0:
            x = roll_hw(x, self.shift_size)
        x = shortcut + self.drop_path(x.reshape(b, length, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Cell):
    """2x2 neighbourhood concat (x0, x1, x2, x3 = (0,0), (1,0), (0,1), (1,1)) -> norm -> Linear 4C->2C."""

    def __init__(self, input_resolution, dim, norm, total_step, ln_eps):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.dim = dim
        self.reduction = nn.Dense(4 * dim, 2 * dim, has_bias=False)
        # 4x the tokens of the blocks two stages on, which have this width: a graph of its own
        self.norm = graph_site(build_norm(norm, 4 * dim, total_step, ln_eps), "merge")

    def reparameterize(self):
        if is_foldable(self.norm):
            self.reduction = fold_norm(self.norm, self.reduction, "before")
            self.norm = nn.Identity()

    def construct(self, x):
        h, w = self.input_resolution
        b, _, c = x.shape
        # (B, H/2, dh, W/2, dw, C) -> (B, H/2, W/2, dw, dh, C): channel blocks ordered dw-major, dh-minor.
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
        x = x.reshape(b, (h // 2) * (w // 2), 4 * c)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Cell):
    def __init__(self, dim, input_resolution, depth, num_heads, window_sizes, mlp_ratio, qkv_bias, drop, attn_drop,
                 drop_paths, attn_type, norm, total_step, ln_eps, kernel_size, downsample, gelu="exact"):
        super().__init__()
        self.blocks = nn.CellList([
            SwinBlock(dim, input_resolution, num_heads, window_sizes[i],
                      0 if i % 2 == 0 else window_sizes[i] // 2, mlp_ratio, qkv_bias, drop, attn_drop,
                      drop_paths[i], attn_type, norm, total_step, ln_eps, kernel_size, gelu)
            for i in range(depth)])
        self.downsample = (PatchMerging(input_resolution, dim, norm, total_step, ln_eps) if downsample else None)

    def construct(self, x):
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class SwinTransformer(nn.Cell):
    """Swin with per-stage attention type (``attn_type``: 'L' = SLA, 'S' = window softmax) and a
    PRepBN/RepBN norm everywhere a LayerNorm was.

    SLA stages use ``window_size`` (clipped to the stage resolution: global attention at 56
    and 28 for 224 input); softmax stages keep 7x7 shifted windows (12 when
    ``window_size > 56``), as upstream's ``BasicLayer`` does. ``gelu="tanh"`` computes the MLPs'
    GELU as the SLAB authors' MindSpore port does (its checkpoint's own logits); the default is
    upstream's exact GELU.
    """

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, attn_type="SSSS", norm="repbn", total_step=60000,
                 ln_eps=1e-5, kernel_size=5, patch_norm=True, gelu="exact"):
        super().__init__()
        check_gelu(gelu)
        depths, num_heads = list(depths), list(num_heads)
        if not (len(depths) == len(num_heads) == len(attn_type)):
            raise ValueError(f"depths {depths}, num_heads {num_heads} and attn_type {attn_type!r} "
                             "must have one entry per stage")
        if img_size % (patch_size * 2 ** (len(depths) - 1)):
            raise ValueError(f"img_size {img_size} must be divisible by patch_size * 2^(stages-1)")
        self.num_classes = num_classes
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.img_size = img_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm if patch_norm else None,
                                      total_step, ln_eps)
        self.pos_drop = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        grid = img_size // patch_size
        softmax_window = 7 if window_size <= 56 else 12
        layers = []
        for i in range(self.num_layers):
            res = (grid // 2 ** i, grid // 2 ** i)
            kind = attn_type[i]
            win = window_size if kind == "L" else softmax_window
            layers.append(BasicLayer(
                int(embed_dim * 2 ** i), res, depths[i], num_heads[i], [win] * depths[i], mlp_ratio, qkv_bias,
                drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])], kind, norm, total_step,
                ln_eps, kernel_size, downsample=i < self.num_layers - 1, gelu=gelu))
        self.layers = nn.CellList(layers)
        self.norm = build_norm(norm, self.num_features, total_step, ln_eps)
        self.head = nn.Dense(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        init_weights_trunc_normal(self)

    def reparameterize(self):
        """The final norm commutes with the token mean, so it folds into the head. Without a
        head (num_classes=0) it stays: nothing linear follows it inside the model."""
        if isinstance(self.head, nn.Dense) and is_foldable(self.norm):
            self.head = fold_norm(self.norm, self.head, "before")
            self.norm = nn.Identity()

    def no_weight_decay(self):
        """Biases, norms, alpha and position tables (read by mindcv's create_optimizer)."""
        return no_weight_decay_names(self)

    def forward_features(self, x):
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_head(self, x):
        return self.head(x.mean(axis=1))

    @property
    def feature_info(self):
        """Per stage ``chs``/``reduction``/``name`` (``features_only``, models/features.py)."""
        p = self.patch_embed.patch_size
        return [dict(chs=int(self.embed_dim * 2 ** i), reduction=p * 2 ** i, name=f"layers.{i}")
                for i in range(self.num_layers)]

    def forward_stages(self, x):
        """Each stage's block output (before its patch merging) as an NCHW map; no final norm."""
        x = self.pos_drop(self.patch_embed(x))
        outs = ()
        for layer in self.layers:
            for blk in layer.blocks:
                x = blk(x)
            h, w = layer.blocks[0].input_resolution
            outs = outs + (x.reshape(x.shape[0], h, w, x.shape[-1]).transpose(0, 3, 1, 2),)
            if layer.downsample is not None:
                x = layer.downsample(x)
        return outs

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


_SLAB_SWIN = dict(window_size=56, attn_type="LLSS", norm="prepbn", total_step=60000, ln_eps=1e-5)
# Registered defaults (shared/reference/checkpoints and SPEC; drop path from the paper's recipe).
SWIN_DEFAULTS = {
    "slab_swin_tiny": dict(_SLAB_SWIN, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                           drop_path_rate=0.2),
    "slab_swin_small": dict(_SLAB_SWIN, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                            drop_path_rate=0.3),
    "slab_swin_base": dict(_SLAB_SWIN, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                           drop_path_rate=0.5),
    "swin_tiny_prepbn": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                             attn_type="SSSS", norm="repbn", drop_path_rate=0.1),
}


@register_model
def slab_swin_tiny(pretrained=False, **kwargs):
    """SLAB-Swin-T: SLA in stages 1-2 (global), PRepBN over 60k steps; 81.8% top-1."""
    return build_registered(SwinTransformer, SWIN_DEFAULTS["slab_swin_tiny"], pretrained, kwargs)


@register_model
def slab_swin_small(pretrained=False, **kwargs):
    """SLAB-Swin-S; 83.6% top-1."""
    return build_registered(SwinTransformer, SWIN_DEFAULTS["slab_swin_small"], pretrained, kwargs)


@register_model
def slab_swin_base(pretrained=False, **kwargs):
    """SLAB-Swin-B."""
    return build_registered(SwinTransformer, SWIN_DEFAULTS["slab_swin_base"], pretrained, kwargs)


@register_model
def swin_tiny_prepbn(pretrained=False, **kwargs):
    """Swin-T with plain RepBN (no LayerNorm schedule) and softmax attention; 81.4% top-1."""
    return build_registered(SwinTransformer, SWIN_DEFAULTS["swin_tiny_prepbn"], pretrained, kwargs)


@register_inferer
def infer_swin_config(shapes):
    """``(model_name, overrides)`` for a PyTorch Swin-family state dict given ``{key: shape}``, or None.

    Sizes come from the shapes (embed dim from the patch conv, heads from the bias tables or
    the SLA ``dwc`` width, stage types from ``positional_encoding``); the resolution from an
    ``attn_mask`` window count, else from a global SLA window. The caller builds the model and
    checks the full layout, so a wrong guess fails loudly.
    """
    if "patch_embed.proj.weight" not in shapes or not any(k.startswith("layers.0.blocks.0.") for k in shapes):
        return None
    embed_dim, in_chans, patch_size = shapes["patch_embed.proj.weight"][:3]
    if "patch_embed.norm.norm1.weight" in shapes:
        norm = "prepbn"
    elif "patch_embed.norm.alpha" in shapes:
        norm = "repbn"
    else:
        return None
    depths, heads, kinds, grids = [], [], "", []
    sla_window = None
    i = 0
    while f"layers.{i}.blocks.0.mlp.fc1.weight" in shapes:
        dim = embed_dim * 2 ** i
        depth = 0
        while f"layers.{i}.blocks.{depth}.mlp.fc1.weight" in shapes:
            depth += 1
        pre = f"layers.{i}.blocks.0.attn."
        if pre + "positional_encoding" in shapes:
            kinds += "L"
            heads.append(dim // shapes[pre + "dwc.weight"][0])
            win = math.isqrt(shapes[pre + "positional_encoding"][1])
            if i == 0:
                sla_window = win
        else:
            kinds += "S"
            heads.append(shapes[pre + "relative_position_bias_table"][1])
            win = (math.isqrt(shapes[pre + "relative_position_bias_table"][0]) + 1) // 2
        for j in range(depth):
            mask = shapes.get(f"layers.{i}.blocks.{j}.attn_mask")
            if mask is not None:
                grids.append(win * math.isqrt(mask[0]) * 2 ** i)
        depths.append(depth)
        i += 1
    if not depths:
        return None
    if grids:
        grid = grids[0]
    elif sla_window is not None:
        grid = sla_window  # SLA windows are clipped to the stage: a global first stage gives the grid
    else:
        grid = win * 2 ** (len(depths) - 1)
    cfg = dict(img_size=grid * patch_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
               depths=depths, num_heads=heads, attn_type=kinds, norm=norm,
               num_classes=shapes["head.weight"][0] if "head.weight" in shapes else 0,
               mlp_ratio=shapes["layers.0.blocks.0.mlp.fc1.weight"][0] / embed_dim,
               qkv_bias="layers.0.blocks.0.attn.qkv.bias" in shapes)
    name = "slab_swin_tiny" if "L" in kinds else "swin_tiny_prepbn"
    for candidate in SWIN_DEFAULTS:
        defaults = SWIN_DEFAULTS[candidate]
        if (defaults["embed_dim"], list(defaults["depths"]), defaults["attn_type"], defaults["norm"]) == (
                embed_dim, depths, kinds, norm):
            name = candidate
            break
    return name, overrides_from_defaults(SwinTransformer, SWIN_DEFAULTS[name], cfg)


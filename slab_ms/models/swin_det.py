"""Detection backbones of SLAB: SLAB-Swin and Swin-PRepBN as Mask R-CNN uses them.

Upstream: ``detection/mmdet_custom/swin_transformer_slab.py`` (``SwinTransformer_SLAB``) and
``swin_transformer_prepbn.py`` (``SwinTransformer_PRepBN``), the mmdet Swin backbone with every
LayerNorm replaced by a progressive RepBN. This module computes exactly what those two classes
compute (shared/reference/detection/README.md), in GRAPH_MODE:

- Any input height and width. The patch embedding zero-pads the image right/bottom to a
  multiple of the patch size; each block zero-pads its normalised map right/bottom to a
  multiple of its window (and crops after the attention); each patch merging zero-pads odd
  maps. The outputs are the unpadded maps, NCHW, strides 4-32.
- SLAB: stage windows fixed at ``(56, 28, window_size, window_size)`` (upstream hard-codes the
  56 and 28), SLA in the stages where ``attn_type`` says ``L`` ('LLSS'); odd blocks of every
  stage shift by half a window, SLA ones included (28 and 14), and SLA ignores the -100 mask,
  so rolled-around tokens mix freely and padded tokens (zeros after norm1) take part.
  Swin-PRepBN: window 7 softmax attention everywhere.
- The -100 mask of shifted softmax windows is built per forward on the padded grid.
- ``norm0``-``norm3``: plain LayerNorms (eps 1e-5) on the stage outputs in ``out_indices``.
- The norms are the detection ``LinearNorm``: no warm-up, ``lam = iter / total_step`` read
  before ``iter`` is decremented, default step 300000 (``iter = total_step``: pure LayerNorm
  from scratch), and the RepBN branch always uses its running statistics: upstream's
  ``_freeze_stages`` puts every BatchNorm1d in eval mode at construction and in each
  ``train()``, so BN statistics never move in detection (BN affine and alpha still train).
- ``frozen_stages`` as upstream: 0 freezes the patch embedding, k >= 2 also ``layers[0..k-2]``
  (no gradient, eval mode whatever ``set_train`` says).

MindSpore compiles one graph per input shape: in GRAPH_MODE every size is a static shape, the
padding amounts and masks are computed from it at compile time, and a network keeps one
compiled graph per size it has seen (two sizes in one process compile twice, and a size seen
before reuses its graph). :func:`export_dynamic_hw` writes one MindIR graph for any height and
width instead (padding as concatenated zeros, masks from graph-time sizes).

Parameter names equal upstream's (only norm suffixes differ), so ``convert.py`` maps mmdet
checkpoints key for key; ``slab_ms.convert.detection`` does the checkpoint work.
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..layers.common import DropPath, Mlp, drop_path_rates, graph_site, init_weights_trunc_normal, no_weight_decay_names
from ..layers.prepbn import PRepBN, RepBN
from ..layers.reparam import fold_norm, is_foldable, norm_affine
from ..layers.sla import SimplifiedLinearAttention
from .registry import register_detection_backbone
from .swin import WindowAttention, roll_hw


# ----------------------------------------------------------------------------------- norms
class FrozenStatsRepBN(RepBN):
    """RepBN whose BatchNorm always normalises with its running statistics, in training too.

    Upstream's detection backbones call ``m.eval()`` on every ``BatchNorm1d`` whenever the
    model is put in training mode, so the running statistics and ``num_batches_tracked``
    never change; gamma, beta and alpha still receive gradients.
    """

    def construct(self, x):
        bn = self.bn
        xf = x.astype(ms.float32)
        scale = bn.gamma * ops.rsqrt(bn.moving_variance + bn.eps)
        y = (xf - bn.moving_mean) * scale + bn.beta + self.alpha * xf
        return y.astype(x.dtype)


class DetectionPRepBN(PRepBN):
    """The detection ``LinearNorm``: LayerNorm and RepBN mixed by ``lam = r0 * iter / total_step``.

    Differs from the classification PRepBN: no warm-up (no ``warm`` counter in the checkpoint),
    default step 300000, and the RepBN branch is :class:`FrozenStatsRepBN`. Training:
    ``lam`` is read before ``iter`` is decremented (never below 0), output
    ``lam * norm1(x) + (1 - lam) * norm2(x)``. Eval: ``norm2(x)``. The counters are int64
    non-trainable Parameters (upstream buffers), updated in GRAPH_MODE with ``ops.assign``.
    """

    phase_forward = False   # its construct has the in-forward schedule only

    def __init__(self, dim, total_step=300000, r0=1.0, ln_eps=1e-5):
        nn.Cell.__init__(self)   # not PRepBN.__init__: no warm-up counter in this layout
        self.iter = Parameter(Tensor(total_step, ms.int64), name="iter", requires_grad=False)
        self.total_step = Parameter(Tensor(total_step, ms.int64), name="total_step", requires_grad=False)
        self.r0 = r0
        self.norm1 = nn.LayerNorm((dim,), epsilon=ln_eps)
        self.norm2 = FrozenStatsRepBN(dim)
        # Read-only stand-in for code that inspects PRepBN counters (no warm-up here).
        self.warm = Tensor(0, ms.int64)

    def set_schedule(self, total_step, warm=0):
        """Restart the schedule: ``iter = total_step``. The detection norm has no warm-up."""
        if warm:
            raise ValueError("the detection PRepBN has no warm-up (upstream LinearNorm without 'warm')")
        for p in (self.iter, self.total_step):
            p.set_data(Tensor(int(total_step), ms.int64))

    def lam(self):
        """The LayerNorm weight the next training forward uses."""
        it, total = int(self.iter.asnumpy()), int(self.total_step.asnumpy())
        return float(np.float32(self.r0 * it) / np.float32(total))

    def affine(self):
        return self.norm2.affine()

    def construct(self, x):
        if not self.training:
            return self.norm2(x)
        it = self.iter
        lam = self._scheduled_lam(it)
        step = ops.select(it > 0, ops.ones_like(it), ops.zeros_like(it))
        ops.assign(self.iter, it - step)
        x1 = self.norm1(x)
        x2 = self.norm2(x)
        lam = lam.astype(x1.dtype)
        return lam * x1 + (1 - lam) * x2


class ChannelAffine(nn.Cell):
    """``x * weight + bias`` per channel: an eval-mode RepBN that cannot fold into its consumer."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight = Parameter(Tensor(np.asarray(weight, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.asarray(bias, np.float32)), name="bias")

    def construct(self, x):
        return (x.astype(ms.float32) * self.weight + self.bias).astype(x.dtype)


# ----------------------------------------------------------------------------------- helpers
def pad_bottom_right(x, pad_b, pad_r, axis, dynamic=False):
    """Zero-pad axes ``axis`` (by ``pad_b`` at the end) and ``axis + 1`` (by ``pad_r``) of a 4-D tensor.

    Static shapes (``dynamic=False``): the amounts are Python ints, nothing is done when both
    are 0, ``ops.pad`` otherwise. ``dynamic=True`` (a graph with unknown height and width,
    :func:`export_dynamic_hw`): the amounts are graph values, so the padding is always
    applied, as a concat of zeros, which may be empty; MindSpore's ``ops.pad`` needs known
    amounts and a data-dependent ``if`` becomes control flow the CPU runtime rejects.
    """
    if not dynamic:
        if pad_b == 0 and pad_r == 0:
            return x
        pads = (0, pad_r, 0, pad_b) if axis == 2 else (0, 0, 0, pad_r, 0, pad_b)
        return ops.pad(x, pads)
    s = x.shape
    if axis == 2:
        x = ops.concat((x, ops.zeros((s[0], s[1], pad_b, s[3]), x.dtype)), axis=2)
        return ops.concat((x, ops.zeros((s[0], s[1], s[2] + pad_b, pad_r), x.dtype)), axis=3)
    x = ops.concat((x, ops.zeros((s[0], pad_b, s[2], s[3]), x.dtype)), axis=1)
    return ops.concat((x, ops.zeros((s[0], s[1] + pad_b, pad_r, s[3]), x.dtype)), axis=2)


def _ceil_to(n, multiple):
    return -(-n // multiple) * multiple


def _regions(n, window, shift):
    """Region id per row (or column) of a padded grid of ``n``: the slices (0, -w), (-w, -s), (-s, None)."""
    idx = ops.arange(0, n, 1, dtype=ms.int32)
    return (idx >= n - window).astype(ms.float32) + (idx >= n - shift).astype(ms.float32)


def shifted_window_mask(hp, wp, window, shift):
    """The (nW, N, N) 0/-100 mask of shifted-window softmax attention on a padded ``hp x wp``
    grid, as upstream's ``BasicLayer.forward`` builds it (ops on compile-time sizes)."""
    ids = _regions(hp, window, shift).reshape(hp, 1) * 3 + _regions(wp, window, shift).reshape(1, wp)
    win = ids.reshape(hp // window, window, wp // window, window).transpose(0, 2, 1, 3)
    win = win.reshape(-1, window * window)
    diff = win.expand_dims(1) - win.expand_dims(2)
    return (diff != 0).astype(ms.float32) * -100.0


def window_partition(x, window):
    """(B, Hp, Wp, C) -> (B * nW, window * window, C), windows row-major within each image."""
    b, hp, wp, c = x.shape
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows, b, hp, wp, window):
    c = windows.shape[-1]
    x = windows.reshape(b, hp // window, wp // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, c)


# ----------------------------------------------------------------------------------- cells
class DetPatchEmbed(nn.Cell):
    """Zero-pad the image right/bottom to a multiple of the patch, patch conv, tokens, norm."""

    def __init__(self, patch_size, in_chans, embed_dim, norm):
        super().__init__()
        self.patch_size = patch_size
        self.dynamic_hw = False
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, pad_mode="valid", has_bias=True)
        self.norm = norm

    def reparameterize(self):
        """The norm acts on the conv's output channels: exact (the image padding precedes the conv)."""
        if self.norm is not None and is_foldable(self.norm):
            self.proj = fold_norm(self.norm, self.proj, "after")
            self.norm = None

    def construct(self, x):
        p = self.patch_size
        h, w = x.shape[2], x.shape[3]
        x = pad_bottom_right(x, (p - h % p) % p, (p - w % p) % p, 2, self.dynamic_hw)
        x = self.proj(x)
        b, c = x.shape[0], x.shape[1]
        x = x.reshape(b, c, -1).transpose(0, 2, 1)
        if self.norm is not None:
            x = self.norm(x)
        return x


class DetSwinBlock(nn.Cell):
    """norm1 -> pad to window multiples -> roll -> window attention -> roll back -> crop ->
    residual; then ``x + mlp(norm2(x))``. SLA blocks (``attn_type`` 'L') ignore the mask."""

    def __init__(self, dim, num_heads, window_size, shift_size, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
                 drop_path, attn_type, total_step, ln_eps, kernel_size):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.attn_type = attn_type
        self.dynamic_hw = False
        self.norm1 = DetectionPRepBN(dim, total_step, ln_eps=ln_eps)
        if attn_type == "L":
            self.attn = SimplifiedLinearAttention(dim, window_size * window_size, num_heads, qkv_bias=qkv_bias,
                                                  attn_drop=attn_drop, proj_drop=drop, kernel_size=kernel_size)
        elif attn_type == "S":
            self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                        proj_drop=drop)
            if qk_scale:   # read when compiling: instances that share a graph must agree on it
                self.attn.scale = qk_scale
                graph_site(self.attn, f"scale {qk_scale}")
            if shift_size > 0:
                graph_site(self.attn, "masked")   # called with a mask, the unshifted blocks' with None
        else:
            raise ValueError(f"attention type must be 'L' (SLA) or 'S' (softmax), got {attn_type!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = DetectionPRepBN(dim, total_step, ln_eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def reparameterize(self):
        """norm2 folds into fc1 (exact). norm1 cannot fold into qkv: the window padding comes
        after norm1, so padded tokens are 0 in the original but would become the norm's shift
        ``b`` (and ``W b + c`` after qkv) in a folded one; upstream's own numbers: exact at
        224x224 (no window padded), 0.1-0.2 relative change at 100x130 and 234x68. It becomes
        one per-channel affine instead (the BN statistics and alpha are gone)."""
        if is_foldable(self.norm1):
            a, b = norm_affine(self.norm1)
            self.norm1 = ChannelAffine(a, b)
        if is_foldable(self.norm2):
            self.mlp.fc1 = fold_norm(self.norm2, self.mlp.fc1, "before")
            self.norm2 = nn.Identity()

    def construct(self, x, h, w, mask):
        b, length, c = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).reshape(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        x = pad_bottom_right(x, pad_b, pad_r, 1, self.dynamic_hw)
        hp, wp = h + pad_b, w + pad_r
        if self.shift_size > 0:
            x = roll_hw(x, -self.shift_size)   # slices: static and dynamic shapes alike
        windows = window_partition(x, ws)
        if self.shift_size > 0 and self.attn_type == "S":
            windows = self.attn(windows, mask)
        else:   # the same arity at every call: the attention cells share one graph (shared_graph)
            windows = self.attn(windows, None)
        x = window_reverse(windows, b, hp, wp, ws)
        if self.shift_size > 0:
            x = roll_hw(x, self.shift_size)
        if self.dynamic_hw or pad_b > 0 or pad_r > 0:
            x = x[:, :h, :w, :]
        x = shortcut + self.drop_path(x.reshape(b, length, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DetPatchMerging(nn.Cell):
    """Zero-pad odd H/W (bottom/right), concat taps (0,0), (1,0), (0,1), (1,1) (row offset
    first), norm, Linear 4C -> 2C without bias."""

    def __init__(self, dim, total_step, ln_eps):
        super().__init__()
        self.dim = dim
        self.dynamic_hw = False
        self.reduction = nn.Dense(4 * dim, 2 * dim, has_bias=False)
        self.norm = DetectionPRepBN(4 * dim, total_step, ln_eps=ln_eps)

    def reparameterize(self):
        """Exact: the padding precedes the norm, so padded taps are normalised as in the original."""
        if is_foldable(self.norm):
            self.reduction = fold_norm(self.norm, self.reduction, "before")
            self.norm = nn.Identity()

    def construct(self, x, h, w):
        b, _, c = x.shape
        x = x.reshape(b, h, w, c)
        x = pad_bottom_right(x, h % 2, w % 2, 1, self.dynamic_hw)
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        # (B, H/2, dh, W/2, dw, C) -> (B, H/2, W/2, dw, dh, C): channel blocks dw-major, dh-minor.
        x = x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h2 * w2, 4 * c)
        return self.reduction(self.norm(x))


class DetBasicLayer(nn.Cell):
    """One stage: blocks (even ones unshifted, odd ones shifted by window // 2), then the merge.
    Returns ``(stage output, input of the next stage)``."""

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
                 drop_paths, attn_type, total_step, ln_eps, kernel_size, downsample):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.attn_type = attn_type
        self.depth = depth
        self.blocks = nn.CellList([
            DetSwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio, qkv_bias,
                         qk_scale, drop, attn_drop, drop_paths[i], attn_type, total_step, ln_eps, kernel_size)
            for i in range(depth)])
        self.downsample = DetPatchMerging(dim, total_step, ln_eps) if downsample else None

    def construct(self, x, h, w):
        ws = self.window_size
        mask = None
        if self.attn_type == "S" and self.depth > 1 and self.shift_size > 0:
            mask = shifted_window_mask(_ceil_to(h, ws), _ceil_to(w, ws), ws, self.shift_size)
        for blk in self.blocks:
            x = blk(x, h, w, mask)
        if self.downsample is not None:
            return x, self.downsample(x, h, w)
        return x, x


class SwinTransformerDet(nn.Cell):
    """Swin detection backbone with detection PRepBN everywhere (upstream ``SwinTransformer_SLAB``
    when ``attn_type='LLSS'`` and ``stage_windows=(56, 28, 0, 0)``, ``SwinTransformer_PRepBN``
    when ``attn_type='SSSS'``). ``construct(x)`` returns the tuple of NCHW maps of the stages in
    ``out_indices``, each after its ``norm{i}``.

    Arguments keep upstream's names. ``stage_windows``: a window per stage, 0 = ``window_size``.
    ``ape`` (absolute position embedding) is not supported (no config uses it);
    ``use_checkpoint`` recomputes blocks in the backward pass (MindSpore ``recompute``);
    ``pretrain_img_size`` is accepted for compatibility (upstream reads it only with ``ape``);
    ``num_classes`` and ``in_channels`` are accepted so that ``mindcv.create_model`` can build
    the backbone (a backbone has no classifier: ``num_classes`` is ignored).
    """

    def __init__(self, pretrain_img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2, ape=False, patch_norm=True,
                 out_indices=(0, 1, 2, 3), frozen_stages=-1, use_checkpoint=False, attn_type="SSSS",
                 stage_windows=None, total_step=300000, ln_eps=1e-5, kernel_size=5, num_classes=None):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        self.num_layers = len(depths)
        stage_windows = list(stage_windows) if stage_windows is not None else [0] * self.num_layers
        if not (len(num_heads) == len(attn_type) == len(stage_windows) == self.num_layers):
            raise ValueError(f"depths {depths}, num_heads {num_heads}, attn_type {attn_type!r} and stage_windows "
                             f"{stage_windows} must have one entry per stage")
        if ape:
            raise ValueError("ape=True (absolute position embedding) is not supported: no SLAB detection config "
                             "uses it")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i < self.num_layers for i in out_indices) or \
                list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f"out_indices {out_indices} must be increasing stage indices in [0, {self.num_layers})")
        if not -1 <= frozen_stages <= self.num_layers + 1:
            raise ValueError(f"frozen_stages {frozen_stages} must be in [-1, {self.num_layers + 1}]")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.attn_type = attn_type
        self.windows = [w if w else window_size for w in stage_windows]
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_layers)]
        self.patch_embed = DetPatchEmbed(patch_size, in_chans, embed_dim,
                                         DetectionPRepBN(embed_dim, total_step, ln_eps=ln_eps) if patch_norm else None)
        self.pos_drop = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        self.layers = nn.CellList([
            DetBasicLayer(self.num_features[i], depths[i], num_heads[i], self.windows[i], mlp_ratio, qkv_bias,
                          qk_scale, drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                          attn_type[i], total_step, ln_eps, kernel_size, downsample=i < self.num_layers - 1)
            for i in range(self.num_layers)])
        for i in out_indices:   # plain LayerNorm, eps 1e-5 (upstream nn.LayerNorm default)
            setattr(self, f"norm{i}", nn.LayerNorm((self.num_features[i],), epsilon=1e-5))
        init_weights_trunc_normal(self)
        if use_checkpoint:
            for layer in self.layers:
                for blk in layer.blocks:
                    blk.recompute()
        self._freeze_stages()

    # ------------------------------------------------------------------ feature description
    @property
    def feature_info(self):
        """Every stage as mindcv/timm describe features: ``chs``, ``reduction``, ``name``."""
        return [dict(chs=self.num_features[i], reduction=self.patch_size * 2 ** i, name=f"layers.{i}")
                for i in range(self.num_layers)]

    @property
    def out_channels(self):
        """Channels of the returned maps (those in ``out_indices``), as mindcv's feature wrapper."""
        return [self.num_features[i] for i in self.out_indices]

    @property
    def reductions(self):
        return [self.patch_size * 2 ** i for i in self.out_indices]

    # ------------------------------------------------------------------ freezing
    def _frozen_cells(self):
        """Upstream ``_freeze_stages``: 0 -> patch embedding; k >= 2 -> also ``layers[0..k-2]``."""
        cells = []
        if self.frozen_stages >= 0:
            cells.append(self.patch_embed)
        if self.frozen_stages >= 2:
            cells.append(self.pos_drop)
            cells.extend(self.layers[i] for i in range(self.frozen_stages - 1))
        return cells

    def _freeze_stages(self):
        for cell in self._frozen_cells():
            for p in cell.get_parameters():
                p.requires_grad = False
            cell.add_flags_recursive(training=False)

    def add_flags_recursive(self, **flags):
        """``set_train`` (on this cell or any parent) reaches here: frozen stages stay in eval
        mode, as upstream's ``train()`` override re-applies ``_freeze_stages``."""
        super().add_flags_recursive(**flags)
        if flags.get("training") and getattr(self, "frozen_stages", -1) >= 0:
            for cell in self._frozen_cells():
                cell.add_flags_recursive(training=False)
        return self

    def no_weight_decay(self):
        return no_weight_decay_names(self)

    # ------------------------------------------------------------------ forward
    def construct(self, x):
        p = self.patch_size
        b = x.shape[0]
        h, w = _ceil_to(x.shape[2], p) // p, _ceil_to(x.shape[3], p) // p
        x = self.pos_drop(self.patch_embed(x))
        outs = ()
        for i in range(self.num_layers):
            x_out, x = self.layers[i](x, h, w)
            if i in self.out_indices:
                y = getattr(self, f"norm{i}")(x_out)
                outs = outs + (y.reshape(b, h, w, self.num_features[i]).transpose(0, 3, 1, 2),)
            h, w = (h + 1) // 2, (w + 1) // 2
        return outs


def export_dynamic_hw(net, file_name, batch_size=None, in_chans=3):
    """Export a detection backbone (eval mode) to ``<file_name>.mindir`` with unknown height and
    width (and batch when ``batch_size`` is None); returns the path.

    ``ops.pad`` needs amounts known when the graph is built and a Python ``if`` on them would
    become data-dependent control flow, so for the export every cell pads unconditionally with
    concatenated zeros (``dynamic_hw``); the flag is reset afterwards, so calls of ``net`` keep
    their static graphs. The exported graph runs any size through MindSpore's ``GraphCell``
    (``tests/test_detection.py`` checks two sizes against the static network)."""
    cells = [cell for _, cell in net.cells_and_names() if hasattr(cell, "dynamic_hw")]
    net.set_train(False)
    try:
        for cell in cells:
            cell.dynamic_hw = True
        ms.export(net, Tensor(shape=[batch_size, in_chans, None, None], dtype=ms.float32), file_name=file_name,
                  file_format="MINDIR")
    finally:
        for cell in cells:
            cell.dynamic_hw = False
    return file_name if file_name.endswith(".mindir") else file_name + ".mindir"


# ----------------------------------------------------------------------------------- registry
_COMMON = dict(patch_size=4, window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
               attn_drop_rate=0.0, ape=False, patch_norm=True, out_indices=(0, 1, 2, 3), use_checkpoint=False,
               total_step=300000, ln_eps=1e-5)
_SLAB = dict(_COMMON, attn_type="LLSS", stage_windows=(56, 28, 0, 0))
_PREPBN = dict(_COMMON, attn_type="SSSS", stage_windows=(0, 0, 0, 0))
_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.1)
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
# name -> (defaults, upstream class, upstream config): the 1x Mask R-CNN configs (the 3x ones
# differ only in drop_path_rate).
DETECTION_DEFAULTS = {
    "slab_swin_tiny_det": dict(_SLAB, **_TINY),
    "slab_swin_small_det": dict(_SLAB, **_SMALL),
    "swin_tiny_prepbn_det": dict(_PREPBN, **_TINY),
    "swin_small_prepbn_det": dict(_PREPBN, **_SMALL),
}
UPSTREAM_CLASS = {"slab_swin_tiny_det": "SwinTransformer_SLAB", "slab_swin_small_det": "SwinTransformer_SLAB",
                  "swin_tiny_prepbn_det": "SwinTransformer_PRepBN", "swin_small_prepbn_det": "SwinTransformer_PRepBN"}


def _build(name, kwargs):
    kwargs = dict(kwargs)
    if kwargs.pop("pretrained", False):
        raise ValueError("pretrained weights are not downloaded by slab_ms: convert a detection checkpoint "
                         "with convert.py, or start from a classification one (convert.py --from classification)")
    kwargs.pop("features_only", None)   # a backbone already returns its feature maps
    if "in_channels" in kwargs:
        kwargs["in_chans"] = kwargs.pop("in_channels")
    return SwinTransformerDet(**dict(DETECTION_DEFAULTS[name], **kwargs))


@register_detection_backbone
def slab_swin_tiny_det(pretrained=False, **kwargs):
    """SLAB-Swin-T detection backbone (upstream ``SwinTransformer_SLAB``, Mask R-CNN 1x config)."""
    return _build("slab_swin_tiny_det", dict(kwargs, pretrained=pretrained))


@register_detection_backbone
def slab_swin_small_det(pretrained=False, **kwargs):
    """SLAB-Swin-S detection backbone (upstream ``SwinTransformer_SLAB``, Mask R-CNN 1x config)."""
    return _build("slab_swin_small_det", dict(kwargs, pretrained=pretrained))


@register_detection_backbone
def swin_tiny_prepbn_det(pretrained=False, **kwargs):
    """Swin-T-PRepBN detection backbone (upstream ``SwinTransformer_PRepBN``, Mask R-CNN 1x config)."""
    return _build("swin_tiny_prepbn_det", dict(kwargs, pretrained=pretrained))


@register_detection_backbone
def swin_small_prepbn_det(pretrained=False, **kwargs):
    """Swin-S-PRepBN detection backbone (upstream ``SwinTransformer_PRepBN``, Mask R-CNN 1x config)."""
    return _build("swin_small_prepbn_det", dict(kwargs, pretrained=pretrained))

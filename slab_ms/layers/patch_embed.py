"""Non-overlapping patch embedding shared by the Swin, DeiT and PVT families."""
from mindspore import nn

from .prepbn import build_norm
from .reparam import fold_norm, is_foldable


class PatchEmbed(nn.Cell):
    """Non-overlapping patch_size conv, flattened to (B, N, C), then the norm."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim, norm, total_step, ln_eps):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, pad_mode="valid", has_bias=True)
        self.norm = build_norm(norm, embed_dim, total_step, ln_eps) if norm else None

    def reparameterize(self):
        """The norm acts on the conv's output channels: exact fold, alpha * bias included."""
        if self.norm is not None and is_foldable(self.norm):
            self.proj = fold_norm(self.norm, self.proj, "after")
            self.norm = None

    def construct(self, x):
        x = self.proj(x)
        b, c = x.shape[0], x.shape[1]
        x = x.reshape(b, c, -1).transpose(0, 2, 1)
        if self.norm is not None:
            x = self.norm(x)
        return x

"""Multi-scale features of the hierarchical classification models (``features_only=True``).

``create_model(name, features_only=True, out_indices=(0, 1, 2, 3))`` returns the model wrapped
in :class:`FeatureExtractor`, as mindcv's ``create_model`` does for its CNNs (mindcv's
``FeatureExtractWrapper`` with a model that computes its own stages): ``construct(x)`` returns
the tuple of NCHW stage maps in ``out_indices``, ``out_channels`` their channels and
``feature_info`` their ``chs``/``reduction``/``name``.

Each family exposes ``forward_stages(x)`` (every stage's output as an NCHW map) and a
``feature_info`` property:

- Swin (SLAB-Swin, Swin-RepBN): the output of each stage's blocks, before its patch merging;
- PVT: the tokens after each stage's blocks (the map the next patch embedding reads);
- CSwin: the tokens after each stage's blocks, before the next merge.

The maps are raw stage outputs: the classification models' final norm (last stage) is not
applied, as in mmdet's backbones, which add their own output norms. The wrapper keeps the
model's parameter names (``auto_prefix=False`` and ``parameters_and_names`` of the model), so
a classification checkpoint loads into it, and saves from it, unchanged. SLA position
encodings tie every SLA model to its ``img_size``: features are computed at that size. DeiT has
no stages and no ``features_only``. The detection backbones (``slab_swin_tiny_det``...) return
their feature maps already.
"""
from mindspore import nn

from ..errors import ConfigError


class FeatureExtractor(nn.Cell):
    """Wrap a hierarchical model: ``construct(x)`` -> tuple of its stage maps in ``out_indices``."""

    def __init__(self, net, out_indices=None):
        super().__init__(auto_prefix=False)
        if not callable(getattr(net, "forward_stages", None)) or not hasattr(net, "feature_info"):
            raise ConfigError(f"features_only is not supported for {type(net).__name__}: it has no stages "
                              "(hierarchical families: Swin, PVT, CSwin)")
        info = net.feature_info
        n = len(info)
        out_indices = tuple(range(n)) if out_indices is None else tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i < n for i in out_indices) or list(out_indices) != sorted(set(out_indices)):
            raise ConfigError(f"out_indices {out_indices} must be increasing stage indices in [0, {n})")
        self.net = net
        self.out_indices = out_indices
        self._info = [dict(info[i]) for i in out_indices]

    def parameters_and_names(self, name_prefix="", expand=True):
        """The wrapped model's names, without this wrapper's attribute (``pos_embed1``, not
        ``net.pos_embed1``): checkpoints of the classification model load and save unchanged."""
        return self.net.parameters_and_names(name_prefix, expand)

    @property
    def feature_info(self):
        """The selected stages: ``[{"chs", "reduction", "name"}, ...]``."""
        return [dict(d) for d in self._info]

    @property
    def out_channels(self):
        return [d["chs"] for d in self._info]

    @property
    def reductions(self):
        return [d["reduction"] for d in self._info]

    def construct(self, x):
        stages = self.net.forward_stages(x)
        outs = ()
        for i in self.out_indices:
            outs = outs + (stages[i],)
        return outs

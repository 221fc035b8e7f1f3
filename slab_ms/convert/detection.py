"""Detection checkpoints: mmdet <-> MindSpore for the SLAB detection backbones, and detection
backbones started from classification checkpoints (``models/swin_det.py``).

**mmdet checkpoints.** mmdet saves a detector as ``{"meta": {...}, "state_dict": {...},
"optimizer": ...}`` with the backbone under ``backbone.<key>`` and the neck and heads under
``neck.``, ``rpn_head.``, ``roi_head.``... slab_ms has the backbone only, so:

- PyTorch -> MindSpore takes the ``backbone.`` keys (strictly: every backbone key must fit,
  ``relative_position_index`` checked against the computed one) and writes them under their
  MindSpore names. Keys outside the backbone are refused, naming how many there are per
  module, unless ``backbone_only=True`` (``--backbone-only``): then they are skipped and counted.
- MindSpore -> PyTorch writes ``{"state_dict": {"backbone.<key>": tensor}}`` in upstream's key
  order, which mmdet's ``load_checkpoint`` reads (it needs no ``meta``); the round trip of a
  backbone checkpoint is bit-exact, dtypes and key order included.
- The architecture is inferred from the keys and shapes (or given as ``model``/``overrides``)
  and the full layout is checked; a bad file fails with one line and nothing is written.

**From a classification checkpoint** (:func:`classification_to_detection`,
``convert.py --from classification``): what upstream does with ``model.pretrained``
(``init_weights`` then ``load_checkpoint(strict=False)``), with a report instead of a log:
every key whose name and shape fit loads; the classifier head, the final norm, the ``warm``
counters and ``attn_mask`` buffers are dropped; ``norm0``-``norm3`` stay new (LayerNorm 1/0).
The PRepBN counters come from the checkpoint, as upstream's loader keeps them (a finished
classification run has ``iter`` 0: lam 0 from the first detection step).

One deliberate difference: upstream's ``swin_tiny_prepbn`` classification model uses plain
RepBN (``<norm>.alpha``, ``<norm>.bn.*``) while its detection backbone expects the
progressive ``LinearNorm`` (``<norm>.norm1.*``, ``<norm>.norm2.*``, counters), so upstream's
loader loads none of its 28 norms (BN stays at mean 0 / var 1 and the schedule restarts at
lam 1). Here each RepBN goes into the BN branch (``norm2``) of its detection PRepBN with the
schedule finished (``iter`` 0, lam 0), so the backbone computes what the classification
model computes; the LayerNorm branch keeps its initial values and the report says so.
"""
from __future__ import annotations

import os
import zipfile
from collections import Counter, OrderedDict
from typing import Any

import numpy as np
import mindspore as ms

from ..checkpoint import model_params, read_ms_checkpoint, save_ms_checkpoint
from ..errors import CheckpointError
from .mapping import ms_to_torch, ms_to_torch_name, torch_layout, torch_to_ms
from .common import build_for_conversion, check_output, resolve_architecture
from .route import BACKBONE, OUT_NORM, is_mmdet_keys, strip_module
from .torch_io import extract_state_dict, read_torch_checkpoint, write_torch_state_dict


# ------------------------------------------------------------------------------ architecture
def infer_detection_config(shapes):
    """``(model_name, overrides)`` of the detection backbone for ``{torch_key: shape}`` (a
    detection backbone, or a Swin-family classification model to start one from), or None.

    Sizes from the shapes (embed dim from the patch conv, heads from the bias tables or the
    SLA ``dwc`` width, stage kinds from ``positional_encoding``, windows from the tables and
    encodings, ``out_indices`` from ``norm<i>``); the caller builds the model and checks the
    full layout."""
    from ..models.registry import overrides_from_defaults
    from ..models.swin_det import DETECTION_DEFAULTS, SwinTransformerDet
    if "patch_embed.proj.weight" not in shapes or "layers.0.blocks.0.mlp.fc1.weight" not in shapes:
        return None
    embed_dim, in_chans, patch_size = shapes["patch_embed.proj.weight"][:3]
    depths, heads, kinds, windows = [], [], "", []
    i = 0
    while f"layers.{i}.blocks.0.mlp.fc1.weight" in shapes:
        dim = embed_dim * 2 ** i
        depth = 0
        while f"layers.{i}.blocks.{depth}.mlp.fc1.weight" in shapes:
            depth += 1
        pre = f"layers.{i}.blocks.0.attn."
        if pre + "positional_encoding" in shapes and pre + "dwc.weight" in shapes:
            kinds += "L"
            heads.append(dim // shapes[pre + "dwc.weight"][0])
            windows.append(int(round(shapes[pre + "positional_encoding"][1] ** 0.5)))
        elif pre + "relative_position_bias_table" in shapes:
            kinds += "S"
            heads.append(shapes[pre + "relative_position_bias_table"][1])
            windows.append((int(round(shapes[pre + "relative_position_bias_table"][0] ** 0.5)) + 1) // 2)
        else:
            return None
        depths.append(depth)
        i += 1
    softmax = [w for w, k in zip(windows, kinds) if k == "S"]
    window_size = softmax[0] if softmax else 7
    cfg = dict(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depths=tuple(depths),
               num_heads=tuple(heads), attn_type=kinds, window_size=window_size,
               stage_windows=tuple(w if k == "L" else 0 for w, k in zip(windows, kinds)),
               mlp_ratio=shapes["layers.0.blocks.0.mlp.fc1.weight"][0] / embed_dim,
               qkv_bias="layers.0.blocks.0.attn.qkv.bias" in shapes,
               patch_norm=any(k.startswith("patch_embed.norm.") for k in shapes))
    outs = tuple(sorted({int(m.group(1)) for m in map(OUT_NORM.match, shapes) if m}))
    if outs:
        cfg["out_indices"] = outs
    kind = "slab_swin" if "L" in kinds else "swin"
    size = "small" if len(depths) == 4 and depths[2] == 18 else "tiny"
    name = f"{kind}_{size}_det" if kind == "slab_swin" else f"swin_{size}_prepbn_det"
    overrides = overrides_from_defaults(SwinTransformerDet, DETECTION_DEFAULTS[name], cfg)
    return name, overrides


def _resolve(model, overrides, shapes, path):
    return resolve_architecture(model, overrides, shapes, path, infer_detection_config, "a detection backbone")


# ------------------------------------------------------------------------------ mmdet <-> ms
class DetectionConversion:
    """What a conversion did: ``name``, ``overrides``, ``n_tensors``, ``skipped`` (module -> count)."""

    def __init__(self, name, overrides, n_tensors, skipped=None):
        self.name, self.overrides, self.n_tensors = name, overrides, n_tensors
        self.skipped = dict(skipped or {})

    def lines(self, source, output):
        shown = " ".join(f"{k}={v}" for k, v in self.overrides.items())
        out = [f"converted {self.n_tensors} tensors of {self.name}{' (' + shown + ')' if shown else ''}: "
               f"{source} -> {output}"]
        if self.skipped:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            out.append(f"skipped {sum(self.skipped.values())} keys outside the backbone ({parts})")
        return out


def read_detection_torch(path, key=None, backbone_only=False, loaded=None):
    """``(backbone state dict without the prefix, {module: skipped count})`` of a PyTorch
    detection checkpoint: an mmdet detector or a bare backbone state dict (``loaded``: the file as
    :mod:`.route` read it)."""
    obj = loaded if loaded is not None else read_torch_checkpoint(path)
    sd, _ = extract_state_dict(obj, key=key, path=path)
    sd = strip_module(sd)
    if not is_mmdet_keys(sd):
        return sd, {}
    backbone = OrderedDict((k[len(BACKBONE):], v) for k, v in sd.items() if k.startswith(BACKBONE))
    skipped = Counter(k.split(".", 1)[0] for k in sd if not k.startswith(BACKBONE))
    if skipped and not backbone_only:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
        raise CheckpointError(f"{path}: {sum(skipped.values())} keys outside the backbone ({parts}); slab_ms "
                              "converts the backbone only: pass --backbone-only to skip them")
    return backbone, dict(skipped)


def detection_torch_to_mindspore(input_path: str, output_path: str, model: str | None = None,
                                 overrides: dict | None = None, key: str | None = None, backbone_only: bool = False,
                                 force: bool = False, loaded: Any = None) -> DetectionConversion:
    """mmdet (or bare) detection backbone checkpoint -> MindSpore ``.ckpt``."""
    check_output(output_path, force)
    sd, skipped = read_detection_torch(input_path, key=key, backbone_only=backbone_only, loaded=loaded)
    name, overrides = _resolve(model, overrides, {k: tuple(v.shape) for k, v in sd.items()}, input_path)
    net = build_for_conversion(name, overrides)
    params = torch_to_ms(net, sd, what=f"{input_path} (backbone, as {name})")
    save_ms_checkpoint(params, output_path)
    return DetectionConversion(name, overrides, len(params), skipped)


def write_mmdet_checkpoint(path, backbone_sd):
    """``{"state_dict": {"backbone.<key>": tensor}}`` (mmdet's detector layout), atomically."""
    write_torch_state_dict(path, OrderedDict((BACKBONE + k, v) for k, v in backbone_sd.items()),
                           wrap_key="state_dict")


def detection_mindspore_to_torch(input_path: str, output_path: str, model: str | None = None,
                                 overrides: dict | None = None, force: bool = False,
                                 loaded: Any = None) -> DetectionConversion:
    """MindSpore detection backbone ``.ckpt`` -> mmdet-style ``.pth`` loadable by upstream's backbone."""
    check_output(output_path, force)
    params = model_params(loaded if loaded is not None else read_ms_checkpoint(input_path))
    shapes = {ms_to_torch_name(k): tuple(np.shape(v)) for k, v in params.items()}
    name, overrides = _resolve(model, overrides, shapes, input_path)
    net = build_for_conversion(name, overrides)
    sd = ms_to_torch(net, params, what=f"{input_path} (as {name})")
    write_mmdet_checkpoint(output_path, sd)
    return DetectionConversion(name, overrides, len(sd))


# ------------------------------------------------------------------------------ classification -> detection
class LoadReport:
    """What :func:`load_classification_weights` did, key by key (PyTorch names).

    ``loaded``: detection keys taken from the checkpoint under their own name (computed
    buffers that equal the checkpoint's included, as upstream counts them); ``mapped``:
    detection key -> checkpoint key (plain RepBN into a PRepBN's BN branch); ``set``: counters
    given a value (key -> value); ``missing`` / ``unexpected``: category -> keys;
    ``size_mismatch``: ``"key [src] vs model [dst]"``; ``notes``: sentences for the user.
    """

    def __init__(self, model, source):
        self.model, self.source = model, source
        self.loaded, self.mapped, self.set, self.size_mismatch, self.notes = [], OrderedDict(), OrderedDict(), [], []
        self.missing, self.unexpected = OrderedDict(), OrderedDict()

    def missing_keys(self):
        return [k for keys in self.missing.values() for k in keys]

    def unexpected_keys(self):
        return [k for keys in self.unexpected.values() for k in keys]

    def as_dict(self):
        return dict(model=self.model, source=self.source, loaded=list(self.loaded), mapped=dict(self.mapped),
                    set=dict(self.set), missing={k: list(v) for k, v in self.missing.items()},
                    unexpected={k: list(v) for k, v in self.unexpected.items()},
                    size_mismatch=list(self.size_mismatch), notes=list(self.notes))

    def lines(self):
        out = [f"{self.model} from {self.source}: {len(self.loaded)} keys loaded"
               + (f", {len(self.mapped)} keys mapped (RepBN -> PRepBN BN branch)" if self.mapped else "")
               + (f", {len(self.set)} counters set" if self.set else "")]
        for title, groups in (("unexpected (dropped)", self.unexpected), ("missing (left at their initial values)",
                                                                          self.missing)):
            total = sum(len(v) for v in groups.values())
            if total:
                out.append(f"{title}: {total}: " + "; ".join(f"{k}: {len(v)}" for k, v in groups.items()))
        if self.size_mismatch:
            out.append(f"size mismatches (left at their initial values): {len(self.size_mismatch)}: "
                       + ", ".join(self.size_mismatch[:8]) + (" ..." if len(self.size_mismatch) > 8 else ""))
        out.extend(self.notes)
        return out


def _group(keys, rules):
    groups = OrderedDict()
    for k in keys:
        for title, test in rules:
            if test(k):
                groups.setdefault(title, []).append(k)
                break
    return groups


def load_classification_weights(net, src, source="checkpoint"):
    """Start the detection backbone ``net`` from a classification state dict ``src``
    (PyTorch names -> arrays or tensor references), in place; returns a :class:`LoadReport`.

    Upstream's ``load_checkpoint(strict=False)`` semantics (name and shape must fit; the rest
    is reported), plus the RepBN -> PRepBN mapping described in the module docstring. Raises
    :class:`CheckpointError`, changing nothing, when nothing at all fits."""
    from ..models.swin_det import DetectionPRepBN
    report = LoadReport(type(net).__name__, source)
    prepbn = [name for name, cell in net.cells_and_names() if isinstance(cell, DetectionPRepBN)]
    # detection PRepBNs whose checkpoint norm is a plain RepBN (<p>.alpha, <p>.bn.*)
    from_repbn = [p for p in prepbn if p + ".alpha" in src and p + ".norm2.alpha" not in src]
    repbn_of = {}
    for p in from_repbn:
        for k in src:
            if k == p + ".alpha" or k.startswith(p + ".bn."):
                repbn_of[p + ".norm2." + k[len(p) + 1:]] = k
    values, used, missing = [], set(), []
    for tname, param, buffer in torch_layout(net):
        skey = tname if tname in src else repbn_of.get(tname)
        if skey is None:
            if param is not None:
                missing.append(tname)
            continue   # a computed buffer the checkpoint does not carry
        used.add(skey)
        expected = tuple(param.shape) if param is not None else tuple(np.shape(buffer))
        if tuple(src[skey].shape) != expected:
            report.size_mismatch.append(f"{skey} {list(src[skey].shape)} vs model {list(expected)}")
            continue
        value = src[skey].numpy() if hasattr(src[skey], "numpy") else np.asarray(src[skey])
        if param is None:
            if np.array_equal(value, buffer):
                report.loaded.append(tname)
            else:
                report.size_mismatch.append(f"{skey} differs from the computed buffer")
            continue
        values.append((param, value))
        if skey == tname:
            report.loaded.append(tname)
        else:
            report.mapped[tname] = skey
    if not values:
        raise CheckpointError(f"{source}: no key fits {type(net).__name__} (not a Swin-family classification "
                              "checkpoint of these sizes?)")
    counters = []
    for p in from_repbn:   # the RepBN took the BN branch: run it alone, as the classifier did
        for suffix, value in ((".iter", 0), (".total_step", None)):
            key = p + suffix
            param = dict(net.parameters_and_names())[key]
            v = int(param.asnumpy()) if value is None else value
            report.set[key] = v
            counters.append((param, v))
    missing = [k for k in missing if k not in report.set]
    repbn_ln = {p + ".norm1." + s for p in from_repbn for s in ("weight", "bias")}
    report.missing = _group(missing, (
        ("detection output norms norm0-3 (new)", lambda k: OUT_NORM.match(k) is not None),
        ("LayerNorm branch of PRepBNs loaded from RepBN (unused at lam 0)", lambda k: k in repbn_ln),
        ("other", lambda k: True)))
    report.unexpected = _group([k for k in src if k not in used], (
        ("classifier head", lambda k: k.startswith("head.")),
        ("classification final norm", lambda k: k.startswith("norm.")),
        ("warm-up counters (the detection PRepBN has none)", lambda k: k.endswith(".warm")),
        ("attn_mask buffers (computed per forward)", lambda k: k.endswith(".attn_mask")),
        ("other", lambda k: True)))
    for param, value in values:
        param.set_data(ms.Tensor(np.asarray(value), dtype=param.dtype))
    for param, value in counters:
        param.set_data(ms.Tensor(value, dtype=param.dtype))
    if from_repbn:
        report.notes.append(
            f"{len(from_repbn)} plain RepBN norms of the checkpoint went into the BatchNorm branch (norm2) of the "
            "detection PRepBN with the schedule finished (iter 0, lam 0): the backbone computes the classification "
            "model's norms; their LayerNorm branch keeps its initial values (unused until the schedule is restarted). "
            "Upstream's loader loads none of these norms (different keys) and restarts at lam 1.")
    kept = [p for p in prepbn if p not in from_repbn and p + ".iter" in report.loaded]
    if kept:
        it = int(dict(net.parameters_and_names())[kept[0] + ".iter"].asnumpy())
        total = int(dict(net.parameters_and_names())[kept[0] + ".total_step"].asnumpy())
        report.notes.append(f"PRepBN counters kept from the checkpoint, as upstream's loader keeps them: iter {it} "
                            f"of total_step {total} (lam {it / max(total, 1):.4f} at the first detection training "
                            "step); the detection norms have no warm-up.")
    return report


def read_classification_state_dict(path, key=None):
    """PyTorch-named state dict of a classification checkpoint: an upstream ``.pth`` (bare or
    under ``model``/``state_dict``/``model_ema``) or a slab_ms MindSpore ``.ckpt``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception:
        is_zip = False
    if is_zip:
        sd, _ = extract_state_dict(read_torch_checkpoint(path), key=key, path=path)
        return strip_module(sd)
    params = model_params(read_ms_checkpoint(path))
    return OrderedDict((ms_to_torch_name(k), np.asarray(v)) for k, v in params.items())


def classification_to_detection(input_path: str, output_path: str, model: str | None = None,
                                overrides: dict | None = None, key: str | None = None,
                                force: bool = False) -> tuple[str, dict, Any]:
    """Build a detection backbone (``model`` or inferred from the checkpoint's sizes), load a
    classification checkpoint into it as :func:`load_classification_weights` does, and write it:
    a ``.pth`` output in mmdet's layout, anything else as a MindSpore ``.ckpt``.
    Returns ``(name, overrides, report)``."""
    from ..models.registry import list_models
    if model and model not in list_models("detection"):
        raise CheckpointError(f"--model {model!r} is not a detection backbone ({', '.join(list_models('detection'))})")
    check_output(output_path, force)
    src = read_classification_state_dict(input_path, key)
    name, overrides = _resolve(model, overrides, {k: tuple(v.shape) for k, v in src.items()}, input_path)
    net = build_for_conversion(name, overrides)
    report = load_classification_weights(net, src, source=input_path)
    report.model = name
    params = OrderedDict((k, p.asnumpy()) for k, p in net.parameters_and_names())
    if output_path.endswith(".pth"):
        write_mmdet_checkpoint(output_path, ms_to_torch(net, params, what=name))
    else:
        save_ms_checkpoint(params, output_path)
    return name, overrides, report

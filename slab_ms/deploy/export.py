"""Export a (fused) model to MindIR or ONNX with a sidecar record of its input and preprocessing
(``export.py`` is the CLI)."""
import os
import shutil
import tempfile

import numpy as np

from ..checkpoint import load_checkpoint
from ..engine.common import build_model
from ..engine.config import load_config
from ..engine.data import class_folders
from ..errors import ConfigError
from ..io import write_json
from ..layers.reparam import remaining_norms, reparameterize
from ..models.registry import create_model, is_model

PREPROCESS_KEYS = ("image_resize", "crop_pct", "interpolation", "mean", "std")


def preprocessing(cfg):
    """The evaluation preprocessing of a training config, as recorded next to an export."""
    return {k: cfg[k] for k in PREPROCESS_KEYS}


def class_names(cfg):
    """The training split's class-folder names when the data is there and fits, else None."""
    path = os.path.join(cfg.data_dir, cfg.train_split)
    if os.path.isdir(path):
        names = class_folders(path)
        if len(names) == cfg.num_classes:
            return names
    return None


def build_for_export(model=None, config=None, ckpt_path=None, overrides=None, batch=1, dynamic_batch=False,
                     fmt="MINDIR", reparam=False):
    """``(net, meta)``: the model in eval mode with its checkpoint loaded, and the sidecar record.
    ``config`` (a training config path) gives the model, sizes, classes and preprocessing."""
    overrides = dict(overrides or {})
    if config:
        cfg = load_config(config)
        if model and model != cfg.model:
            raise ConfigError(f"--model {model} differs from the config's model {cfg.model}")
        cfg.model_kwargs = dict(cfg.model_kwargs, **overrides)
        cfg.drop_path_rate = 0.0
        net = build_model(cfg)
        model, kwargs = cfg.model, dict(cfg.model_kwargs, num_classes=cfg.num_classes, img_size=cfg.image_resize)
        prep, names = preprocessing(cfg), class_names(cfg)
    else:
        if not model:
            raise ConfigError("give --model NAME or --config CONFIG")
        if not is_model(model):
            raise ConfigError(f"unknown model {model!r}; see slab_ms.list_models()")
        net = create_model(model, **overrides)
        kwargs = overrides
        cfg = load_config(None, {"image_resize": str(getattr(net, "img_size", 224))})
        prep, names = preprocessing(cfg), None
    if ckpt_path:
        load_checkpoint(net, ckpt_path)
    net.set_train(False)
    size = getattr(net, "img_size", prep["image_resize"])
    meta = {"model": model, "model_kwargs": kwargs, "checkpoint": ckpt_path or None, "format": fmt,
            "reparameterized": bool(reparam), "input_shape": [None if dynamic_batch else batch, 3, size, size],
            "preprocess": prep, "classes": names}
    return net, meta


def check_export_request(fmt, dynamic_batch, output, force=False):
    """What can be refused before a model is built: returns the file suffix."""
    if fmt == "ONNX" and dynamic_batch:
        raise ConfigError("MindSpore's ONNX exporter has no dynamic shapes: use --batch N with ONNX "
                          "(MINDIR supports --dynamic-batch)")
    suffix = ".mindir" if fmt == "MINDIR" else ".onnx"
    if not output.endswith(suffix):
        raise ConfigError(f"--output must end with {suffix} for --format {fmt}")
    if os.path.exists(output) and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite")
    return suffix


def export_model(net, meta, output, force=False, verify=False, mindir_compat=None):
    """Fold (when ``meta['reparameterized']``), export ``net`` to ``output`` and write
    ``output + '.json'``; with ``verify`` the file is reloaded and compared with ``net``.
    The file appears whole or not at all. Returns ``meta`` with what was found."""
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    fmt = meta["format"]
    shape = meta["input_shape"]
    suffix = check_export_request(fmt, shape[0] is None, output, force)
    if meta["reparameterized"]:
        reparameterize(net)
        meta["norms_left"] = remaining_norms(net)
    example = ms.Tensor(shape=shape, dtype=ms.float32) if shape[0] is None else \
        ms.Tensor(np.zeros(shape, np.float32))
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=out_dir)
    try:
        ms.export(net, example, file_name=os.path.join(tmp, "model"), file_format=fmt)
        produced = os.path.join(tmp, "model" + suffix)
        if verify:
            meta["verify_max_abs_diff"] = verify_export(net, produced, fmt, shape)
        if mindir_compat:   # rewritten for an older Lite after the check (MindSpore 2.10 reads only its own form)
            from .mindir import convert_file
            convert_file(produced, produced)
            meta["mindir_compat"] = mindir_compat
        os.replace(produced, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # the temp folder made above
    write_json(output + ".json", meta)
    return meta


def verify_export(net, path, fmt, shape):
    """Largest |exported - in-memory| on a random batch (2 images for a dynamic batch); None for
    ONNX without onnxruntime."""
    import mindspore as ms
    b = 2 if shape[0] is None else shape[0]
    x = np.random.default_rng(0).standard_normal([b] + shape[1:]).astype(np.float32)
    expected = net(ms.Tensor(x)).asnumpy()
    if fmt == "MINDIR":
        got = ms.nn.GraphCell(ms.load(path))(ms.Tensor(x)).asnumpy()
    else:
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        sess = ort.InferenceSession(path)
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.abs(got - expected).max())

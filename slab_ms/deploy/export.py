"""Deployment: export a (fused) model to MindIR or ONNX with a sidecar record of its input and
preprocessing, and run an exported MindIR on image files (export.py and infer.py are the CLIs).
"""
import json
import os
import shutil
import tempfile

import numpy as np

from ._env import cache_dir
from .checkpoint import load_checkpoint
from .engine.config import load_config
from .engine.data import IMAGE_EXTENSIONS, class_folders
from .errors import ConfigError
from .layers.reparam import remaining_norms, reparameterize
from .models.registry import create_model, is_model

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
    from .engine.trainer import build_model
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
            from .mindir_compat import convert_file
            convert_file(produced, produced)
            meta["mindir_compat"] = mindir_compat
        os.replace(produced, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # the temp folder made above
    with open(output + ".json", "w") as f:
        json.dump(meta, f, indent=2)
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


# ----------------------------------------------------------------------------- inference
def list_images(path):
    """An image file, or the image files under a folder (recursively, sorted)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ConfigError(f"--images {path}: no such file or folder")
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise ConfigError(f"--images {path}: no images found")
    return found


def load_meta(model_file, config=None):
    """The export record beside ``model_file``, with preprocessing and classes from ``config`` if given."""
    meta = {}
    side = model_file + ".json"
    if os.path.isfile(side):
        try:
            with open(side) as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{side}: not a readable export record ({e})") from None
        if not isinstance(meta, dict):
            raise ConfigError(f"{side}: not an export record (expected a JSON object)")
    if config:
        cfg = load_config(config)
        meta.update(preprocess=preprocessing(cfg), classes=class_names(cfg) or meta.get("classes"))
    if "preprocess" not in meta:
        raise ConfigError(f"no preprocessing known for {model_file}: export it with export.py (which writes "
                          f"{side}) or pass --config")
    return meta


def make_pipeline(prep):
    """The evaluation transform of validate.py (slab_ms.engine.data.eval_transforms), for eager use."""
    from mindspore.dataset.transforms import Compose
    from .engine.data import eval_transforms
    cfg = load_config(None, {k: (json.dumps(v) if isinstance(v, list) else str(v)) for k, v in prep.items()})
    return Compose(eval_transforms(cfg))


def preprocess(paths, pipeline):
    out = []
    for p in paths:
        try:
            out.append(pipeline(np.fromfile(p, np.uint8)))
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"{p}: cannot decode image ({str(e).strip().splitlines()[0]})") from None
    return np.stack(out).astype(np.float32)


class LiteRunner:
    """MindSpore Lite's Python API (``mindspore_lite``), where it is installed."""
    name = "mindspore_lite"

    def __init__(self, path, device):
        import mindspore_lite as mslite
        context = mslite.Context()
        context.target = [device]
        self.model = mslite.Model()
        self.model.build_from_file(path, mslite.ModelType.MINDIR, context)

    def __call__(self, batch):
        inputs = self.model.get_inputs()
        if list(inputs[0].shape) != list(batch.shape):
            self.model.resize(inputs, [list(batch.shape)])
        inputs[0].set_data_from_numpy(batch)
        return self.model.predict(inputs)[0].get_data_to_numpy()


class GraphCellRunner:
    """MindSpore's own MindIR runtime (``nn.GraphCell``)."""
    name = "mindspore nn.GraphCell"

    def __init__(self, path, device):
        import mindspore as ms
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device({"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}[device])
        self.ms = ms
        self.cell = ms.nn.GraphCell(ms.load(path))

    def __call__(self, batch):
        return self.cell(self.ms.Tensor(batch)).asnumpy()


class LiteCppRunner:
    """MindSpore Lite's C++ runtime through ``deploy/lite``'s runner (a separate process: Lite and
    MindSpore 2.10 cannot share one). Needs a MindIR that Lite builds (``export.py --mindir-compat
    2.0`` for PyPI's Lite 2.0) and the runner (``scripts/get_lite.sh`` builds it)."""
    name = "mindspore_lite C++ (deploy/lite)"

    def __init__(self, path, device, runner=None, threads=None):
        self.path, self.device = path, device
        self.runner = runner or default_lite_runner()
        if not self.runner or not os.access(self.runner, os.X_OK):
            raise ConfigError("the MindSpore Lite runner is not built: run bash scripts/get_lite.sh (or set "
                              "SLAB_LITE_RUNNER)")
        self.threads = threads or max(1, min(os.cpu_count() or 1, 8))

    def __call__(self, batch):
        import subprocess
        with tempfile.TemporaryDirectory(prefix="slab-lite-") as tmp:   # removed with what it holds
            src, dst = os.path.join(tmp, "in.npy"), os.path.join(tmp, "out.npy")
            np.save(src, np.ascontiguousarray(batch, dtype=np.float32))
            p = subprocess.run([self.runner, self.path, src, dst, "--device", self.device, "--threads",
                                str(self.threads)], capture_output=True, text=True)
            if p.returncode != 0:
                lines = p.stderr.strip().splitlines()
                raise ConfigError(lines[-1][len("error: "):] if lines and lines[-1].startswith("error: ")
                                  else f"the Lite runner failed (exit {p.returncode})")
            return np.load(dst, allow_pickle=False)


def default_lite_runner():
    """``SLAB_LITE_RUNNER``, else where scripts/get_lite.sh builds it (None when not built)."""
    path = os.environ.get("SLAB_LITE_RUNNER")
    if path:
        return path
    cache = os.environ.get("LITE_CACHE") or cache_dir("lite-2.0.0")
    path = os.path.join(cache, "lite_runner")
    return path if os.access(path, os.X_OK) else None


def is_lite_compatible(path):
    """Whether a MindIR file is mind_ir_version 1 (what Lite 2.0 builds: ``--mindir-compat 2.0``)."""
    from mindspore.train import mind_ir_pb2
    m = mind_ir_pb2.ModelProto()
    try:
        with open(path, "rb") as f:
            m.ParseFromString(f.read())
    except Exception:  # a damaged file: let the runtime say so
        return False
    return m.mind_ir_version <= 1


RUNTIMES = ("auto", "lite", "lite-cpp", "mindspore")


def make_runner(path, device, runtime="auto"):
    """``(runner, note)`` for ``runtime``: ``lite`` (the ``mindspore_lite`` Python package),
    ``lite-cpp`` (deploy/lite's runner), ``mindspore`` (GraphCell), or ``auto``: the first of those
    that can run this file, with a note saying why the others were not used."""
    if runtime == "lite":
        return LiteRunner(path, device), None
    if runtime == "lite-cpp":
        return LiteCppRunner(path, device), None
    if runtime == "mindspore":
        return GraphCellRunner(path, device), None
    try:
        import mindspore_lite  # noqa: F401
        return LiteRunner(path, device), None
    except ImportError:
        pass
    runner = default_lite_runner()
    if runner and is_lite_compatible(path):
        return LiteCppRunner(path, device, runner), "mindspore_lite (Python) is not installed"
    why = "no Lite runtime (bash scripts/get_lite.sh builds the C++ one)" if not runner else \
        "the file is not Lite 2.0 compatible (export.py --mindir-compat 2.0 writes one)"
    return GraphCellRunner(path, device), why


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classify(runner, paths, meta, batch_size=16, top=5):
    """Yield ``{"image": path, "top": [[label, prob], ...]}`` per image, in batches."""
    fixed = (meta.get("input_shape") or [None])[0]
    batch_size = fixed or batch_size
    classes = meta.get("classes")
    pipeline = make_pipeline(meta["preprocess"])   # built once, applied to every batch
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        batch = preprocess(chunk, pipeline)
        pad = batch_size - len(chunk) if fixed else 0   # a fixed-batch model gets a full batch
        if pad:
            batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
        probs = softmax(runner(batch)[:len(chunk)].astype(np.float64))
        for path, pr in zip(chunk, probs):
            order = np.argsort(-pr)[:top]
            labels = [classes[j] if classes else str(j) for j in order]
            yield {"image": path, "top": [[lab, float(pr[j])] for lab, j in zip(labels, order)]}

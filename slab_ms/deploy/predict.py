"""Classify image files with an exported model: the sidecar record, the evaluation preprocessing of
validate.py, and batches through a runtime of ``runtimes.py`` (``infer.py`` is the CLI)."""
import json
import os

import numpy as np

from ..engine.config import load_config
from ..engine.data import IMAGE_EXTENSIONS
from ..errors import ConfigError
from .export import class_names, preprocessing


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
    from ..engine.data import eval_transforms
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

"""Classify image files with an exported model: the sidecar record, the evaluation preprocessing of
validate.py, and batches through a runtime of ``runtimes.py`` (``infer.py`` is the CLI)."""
import json
import os
import re

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


def _reason(error):
    """The useful line of a decode error: MindSpore wraps the decoder's exception in a report of many
    lines (the Python call stack, then its own [ERROR] line); take the exception's own message."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = re.match(r"^[A-Za-z_.]*(?:Error|Exception): (.+)$", ln)
        if m and not m.group(1).startswith("Traceback"):
            return m.group(1)
    for ln in lines:
        if ln.startswith("[ERROR] ") and "Python Call Stack" not in ln:
            return ln[len("[ERROR] "):]
    return lines[0] if lines else type(error).__name__


def decode_batch(paths, pipeline, strict=False):
    """``(batch or None, kept paths, [(path, why), ...])``: the images that decode, stacked float32, and
    those that do not, each with a one-line reason (skipped, as validate.py skips them). With
    ``strict`` the first one that does not decode is a :class:`ConfigError` naming it."""
    out, kept, bad = [], [], []
    for p in paths:
        try:
            raw = np.fromfile(p, np.uint8)
        except OSError as e:
            why = f"cannot read image ({e.strerror or e})"
        else:
            try:
                if not raw.size:
                    raise ValueError("empty file")
                out.append(pipeline(raw))
                kept.append(p)
                continue
            except (OSError, RuntimeError, ValueError) as e:   # Pillow's and MindSpore's decode errors
                why = _reason(e)
                why = why if why.startswith("cannot decode image") else f"cannot decode image ({why})"
        if strict:
            raise ConfigError(f"{p}: {why}")
        bad.append((p, why))
    return (np.stack(out).astype(np.float32) if out else None), kept, bad


def preprocess(paths, pipeline):
    """The images of ``paths`` as one float32 batch; an image that does not decode is a ConfigError."""
    return decode_batch(paths, pipeline, strict=True)[0]


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _start(runner, batch):
    """Run ``batch``; returns a function giving its output. A runner with ``submit`` (the Lite C++
    runner, a separate process) works while the caller prepares the next batch."""
    if hasattr(runner, "submit"):
        runner.submit(batch)
        return runner.collect
    out = runner(batch)
    return lambda: out


def classify(runner, paths, meta, batch_size=16, top=5, strict=False):
    """Yield, in file order, ``{"image": path, "top": [[label, prob], ...]}`` per image, and
    ``{"image": path, "error": why}`` per image that does not decode (with ``strict``, a
    :class:`ConfigError` instead). Batches of ``batch_size`` (the model's own for a fixed batch);
    the next batch is decoded while one runs."""
    fixed = (meta.get("input_shape") or [None])[0]
    batch_size = fixed or batch_size
    classes = meta.get("classes")
    pipeline = make_pipeline(meta["preprocess"])   # built once, applied to every batch

    def results(chunk, kept, bad, output):
        found = {p: {"image": p, "error": why} for p, why in bad}
        probs = softmax(output[:len(kept)].astype(np.float64)) if kept else []
        for path, pr in zip(kept, probs):
            order = np.argsort(-pr)[:top]
            labels = [classes[j] if classes else str(j) for j in order]
            found[path] = {"image": path, "top": [[lab, float(pr[j])] for lab, j in zip(labels, order)]}
        return [found[p] for p in chunk]

    running = None   # (chunk, kept, bad, output getter) of the batch in flight
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        batch, kept, bad = decode_batch(chunk, pipeline, strict)
        if running:
            yield from results(*running[:3], running[3]())
            running = None
        if batch is None:   # nothing in this chunk decodes
            yield from results(chunk, [], bad, None)
            continue
        pad = batch_size - len(kept) if fixed else 0   # a fixed-batch model gets a full batch
        if pad:
            batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
        running = (chunk, kept, bad, _start(runner, batch))
    if running:
        yield from results(*running[:3], running[3]())

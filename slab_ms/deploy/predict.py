"""Classify image files with an exported model: the sidecar record, the evaluation preprocessing of
validate.py, and batches through a runtime of ``runtimes.py`` (``infer.py`` is the CLI)."""
import collections
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


class Preprocess:
    """validate.py's evaluation transform (slab_ms.engine.data.eval_transforms) applied to many files at
    once, with the same pixels: each file is decoded alone by the transform's first step (Pillow,
    :class:`~slab_ms.engine.data.ImageDecoder`); the array steps that follow run once per group of
    images that decode to the same size. MindSpore's Resize, CenterCrop and Normalize take
    ``<..., H, W, C>`` (a run of them is one call); HWC2CHW, which does not, is its transpose; any
    other step runs per image."""
    BATCHED = ("Resize", "CenterCrop", "Normalize")

    def __init__(self, prep):
        from mindspore.dataset.transforms import Compose
        from ..engine.data import eval_transforms
        cfg = load_config(None, {k: (json.dumps(v) if isinstance(v, list) else str(v)) for k, v in prep.items()})
        self.decode, *steps = eval_transforms(cfg)
        self._batched, run = [], []
        for step in steps + [None]:
            name = type(step).__name__
            if name in self.BATCHED:
                run.append(step)
                continue
            if run:
                self._batched.append(Compose(run) if len(run) > 1 else run[0])
                run = []
            if name == "HWC2CHW":
                self._batched.append(lambda b: b.transpose(0, 3, 1, 2))
            elif step is not None:
                self._batched.append(lambda b, step=step: np.stack([step(x) for x in b]))

    def transform(self, images):
        """The decoded HWC uint8 ``images`` as one float32 batch, in order."""
        groups = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        out = None
        for idx in groups.values():
            b = np.stack([images[i] for i in idx])
            for step in self._batched:
                b = step(b)
            if len(groups) == 1:
                return np.ascontiguousarray(b, dtype=np.float32)
            if out is None:
                out = np.empty((len(images),) + b.shape[1:], np.float32)
            out[idx] = b
        return out

    def __call__(self, raw):
        """One image's encoded bytes -> its CHW float32 array (as validate.py gives it)."""
        return self.transform([self.decode(raw)])[0]


def make_pipeline(prep):
    """The evaluation transform of validate.py for the recorded preprocessing ``prep`` (a :class:`Preprocess`)."""
    return Preprocess(prep)


def decode_batch(paths, pipeline, strict=False):
    """``(batch or None, kept paths, [(path, why), ...])``: the images that decode, through ``pipeline``
    (a :class:`Preprocess`) as one float32 batch, and those that do not, each with a one-line reason
    (skipped, as validate.py skips them). With ``strict`` the first one that does not decode is a
    :class:`ConfigError` naming it."""
    images, kept, bad = [], [], []
    for p in paths:
        try:
            with open(p, "rb") as f:
                raw = f.read()
        except OSError as e:
            why = f"cannot read image ({e.strerror or e})"
        else:
            try:
                if not raw:
                    raise ValueError("empty file")
                images.append(pipeline.decode(raw))
                kept.append(p)
                continue
            except (OSError, RuntimeError, ValueError) as e:   # the decoder's errors
                why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                why = why if why.startswith("cannot decode image") else f"cannot decode image ({why})"
        if strict:
            raise ConfigError(f"{p}: {why}")
        bad.append((p, why))
    return (pipeline.transform(images) if images else None), kept, bad


def preprocess(paths, pipeline):
    """The images of ``paths`` as one float32 batch; an image that does not decode is a ConfigError."""
    return decode_batch(paths, pipeline, strict=True)[0]


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _start(runner, batch, pool=None):
    """Run ``batch``; returns a function giving its output. A runner with ``submit`` (the Lite C++
    runner, a separate process), or any runner given a thread ``pool``, works while the caller
    prepares the next batch."""
    if hasattr(runner, "submit"):
        runner.submit(batch)
        return runner.collect
    if pool is not None:
        return pool.submit(runner, batch).result
    out = runner(batch)
    return lambda: out


def classify(runner, paths, meta, batch_size=16, top=5, strict=False, pool=None):
    """Yield, in file order, ``{"image": path, "top": [[label, prob], ...]}`` per image, and
    ``{"image": path, "error": why}`` per image that does not decode (with ``strict``, a
    :class:`ConfigError` instead). Batches of ``batch_size`` (the model's own for a fixed batch); a
    runner with ``pad_batches`` gets every batch padded to that size, as it compiles per size.
    The next batch is decoded while one runs: in the Lite C++ runner's process (which holds up to
    ``runner.depth(batch)`` batches, so it starts one the moment the last ends), or in ``pool``
    (a ``concurrent.futures`` executor) for a runner that runs in this process."""
    fixed = (meta.get("input_shape") or [None])[0]
    batch_size = fixed or batch_size
    if not fixed and getattr(runner, "pad_batches", False) and len(paths) >= batch_size:
        fixed = batch_size   # one batch size for the runtime: the last, short batch padded
    classes = meta.get("classes")
    pipeline = make_pipeline(meta["preprocess"])   # built once, applied to every batch

    def results(chunk, kept, bad, output):
        found = {p: {"image": p, "error": why} for p, why in bad}
        if kept:
            probs = softmax(output()[:len(kept)].astype(np.float64))
            order = np.argsort(-probs, axis=1)[:, :top]
            for path, js, ps in zip(kept, order.tolist(), np.take_along_axis(probs, order, 1).tolist()):
                found[path] = {"image": path, "top": [[classes[j] if classes else str(j), q] for j, q in zip(js, ps)]}
        return [found[p] for p in chunk]

    running = collections.deque()   # (chunk, kept, bad, output getter) of the batches in flight, oldest first
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        batch, kept, bad = decode_batch(chunk, pipeline, strict)
        if batch is None:   # nothing in this chunk decodes: its errors come after the batches before it
            while running:
                yield from results(*running.popleft())
            yield from results(chunk, [], bad, None)
            continue
        pad = batch_size - len(kept) if fixed else 0   # a fixed-batch model (or runner) gets a full batch
        if pad:
            batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
        depth = runner.depth(batch) if hasattr(runner, "depth") else 1
        while len(running) >= depth:
            yield from results(*running.popleft())
        running.append((chunk, kept, bad, _start(runner, batch, pool)))
    while running:
        yield from results(*running.popleft())

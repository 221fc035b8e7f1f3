"""Export a SLAB model to MindIR (for MindSpore Lite) or ONNX.

    python export.py --model slab_swin_tiny --ckpt_path X.ckpt --format MINDIR --output X.mindir \\
        [--reparam] [--batch N | --dynamic-batch] [--config configs/Y.yaml] [--set key=value ...]

``--reparam`` folds every RepBN/PRepBN into the neighbouring linear maps first (the deployed
form). ``--config`` takes the model, its sizes, the image size and the preprocessing from a
training config (what train.py trained). Next to the output a ``.json`` file records the
model, input shape, preprocessing and class names, which infer.py reads. ``--verify`` reloads
the exported file and compares it with the in-memory model on random input. A bad input exits
1 with one line; nothing partial is left.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

import slab_ms
from convert import parse_overrides   # the converter's --set key=value parsing
from slab_ms.convert.torch_io import CheckpointError
from slab_ms.engine.config import ConfigError, load_config
from slab_ms.engine.data import class_folders


def preprocessing(cfg):
    keys = ("image_resize", "crop_pct", "interpolation", "mean", "std")
    return {k: cfg[k] for k in keys}


def class_names(cfg):
    path = os.path.join(cfg.data_dir, cfg.train_split)
    if os.path.isdir(path):
        names = class_folders(path)
        if len(names) == cfg.num_classes:
            return names
    return None


def build(args):
    """``(net, meta)``: the model with its checkpoint loaded, and the sidecar record."""
    from slab_ms.engine.trainer import build_model
    overrides = parse_overrides(args.set)
    if args.config:
        cfg = load_config(args.config)
        if args.model and args.model != cfg.model:
            raise ConfigError(f"--model {args.model} differs from the config's model {cfg.model}")
        cfg.model_kwargs = dict(cfg.model_kwargs, **overrides)
        cfg.drop_path_rate = 0.0
        net = build_model(cfg)
        model, kwargs = cfg.model, dict(cfg.model_kwargs, num_classes=cfg.num_classes, img_size=cfg.image_resize)
        prep, names = preprocessing(cfg), class_names(cfg)
    else:
        if not args.model:
            raise ConfigError("give --model NAME or --config CONFIG")
        if not slab_ms.is_model(args.model):
            raise ConfigError(f"unknown model {args.model!r}; see slab_ms.list_models()")
        net = slab_ms.create_model(args.model, **overrides)
        model, kwargs = args.model, overrides
        cfg = load_config(None, {"image_resize": str(getattr(net, "img_size", 224))})
        prep, names = preprocessing(cfg), None
    if args.ckpt_path:
        slab_ms.load_checkpoint(net, args.ckpt_path)
    net.set_train(False)
    size = getattr(net, "img_size", prep["image_resize"])
    meta = {"model": model, "model_kwargs": kwargs, "checkpoint": args.ckpt_path or None, "format": args.format,
            "reparameterized": bool(args.reparam), "input_shape": [None if args.dynamic_batch else args.batch, 3,
                                                                  size, size],
            "preprocess": prep, "classes": names}
    return net, meta


def export(args):
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    if args.format == "ONNX" and args.dynamic_batch:
        raise ConfigError("MindSpore's ONNX exporter has no dynamic shapes: use --batch N with ONNX "
                          "(MINDIR supports --dynamic-batch)")
    suffix = ".mindir" if args.format == "MINDIR" else ".onnx"
    if not args.output.endswith(suffix):
        raise ConfigError(f"--output must end with {suffix} for --format {args.format}")
    if os.path.exists(args.output) and not args.force:
        raise ConfigError(f"{args.output} exists; pass --force to overwrite")
    net, meta = build(args)
    if args.reparam:
        slab_ms.reparameterize(net)
        left = slab_ms.remaining_norms(net)
        meta["norms_left"] = left
    shape = meta["input_shape"]
    example = ms.Tensor(shape=shape, dtype=ms.float32) if shape[0] is None else \
        ms.Tensor(np.zeros(shape, np.float32))
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=out_dir)
    try:
        ms.export(net, example, file_name=os.path.join(tmp, "model"), file_format=args.format)
        produced = os.path.join(tmp, "model" + suffix)
        if args.verify:
            meta["verify_max_abs_diff"] = verify(net, produced, args.format, shape)
        os.replace(produced, args.output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(args.output + ".json", "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def verify(net, path, fmt, shape):
    """Largest |exported - in-memory| on a random batch (2 images for a dynamic batch)."""
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--config", help="take model, sizes and preprocessing from a training config")
    p.add_argument("--ckpt_path", help="model or training checkpoint (.ckpt)")
    p.add_argument("--format", type=str.upper, choices=["MINDIR", "ONNX"], default="MINDIR")
    p.add_argument("--output", required=True)
    p.add_argument("--reparam", action="store_true", help="fold RepBN/PRepBN before exporting")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model constructor override")
    p.add_argument("--verify", action="store_true", help="reload the file and compare with the model")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = p.parse_args(argv)
    try:
        if args.batch < 1:
            raise ConfigError("--batch must be >= 1")
        meta = export(args)
    except (ConfigError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"output": args.output, **{k: meta[k] for k in ("model", "format", "reparameterized",
                                                                      "input_shape")},
                      **({"norms_left": meta["norms_left"]} if "norms_left" in meta else {}),
                      **({"verify_max_abs_diff": meta["verify_max_abs_diff"]} if "verify_max_abs_diff" in meta
                         else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

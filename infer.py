"""Classify images with an exported MindIR: ``python infer.py --model_file X.mindir --images PATH``.

PATH is an image file or a folder (searched recursively). Runs the MindIR with MindSpore
Lite's Python API (``mindspore_lite``: Context, Model.build_from_file, predict; ``--device``
cpu, gpu or ascend) when it is installed, else with MindSpore's own MindIR runtime
(``nn.GraphCell``), and says which. Preprocessing is validate.py's evaluation transform with
the values recorded by export.py next to the model (``X.mindir.json``), or from ``--config``.
Prints the top-5 classes with probabilities per image, then one JSON line.
"""
import argparse
import json
import os
import sys

import numpy as np

import slab_ms  # noqa: F401  (sets the oneDNN ISA before MindSpore loads)
from slab_ms.engine.config import ConfigError, load_config
from slab_ms.engine.data import IMAGE_EXTENSIONS


def list_images(path):
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ConfigError(f"--images {path}: no such file or folder")
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise ConfigError(f"--images {path}: no images found")
    return found


def load_meta(model_file, config):
    meta = {}
    side = model_file + ".json"
    if os.path.isfile(side):
        with open(side) as f:
            meta = json.load(f)
    if config:
        cfg = load_config(config)
        from export import class_names, preprocessing
        meta.update(preprocess=preprocessing(cfg), classes=class_names(cfg) or meta.get("classes"))
    if "preprocess" not in meta:
        raise ConfigError(f"no preprocessing known for {model_file}: export it with export.py (which writes "
                          f"{side}) or pass --config")
    return meta


def make_pipeline(prep):
    """The evaluation transform of validate.py (slab_ms.engine.data.eval_transforms), for eager use."""
    from mindspore.dataset.transforms import Compose
    from slab_ms.engine.data import eval_transforms
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
    name = "mindspore nn.GraphCell"

    def __init__(self, path, device):
        import mindspore as ms
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device({"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}[device])
        self.ms = ms
        self.cell = ms.nn.GraphCell(ms.load(path))

    def __call__(self, batch):
        return self.cell(self.ms.Tensor(batch)).asnumpy()


def make_runner(path, device):
    try:
        import mindspore_lite  # noqa: F401
    except ImportError:
        return GraphCellRunner(path, device), "mindspore_lite is not installed"
    return LiteRunner(path, device), None


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_file", required=True, help="a .mindir from export.py")
    p.add_argument("--images", required=True, help="an image or a folder of images")
    p.add_argument("--config", help="training config for the preprocessing and class names")
    p.add_argument("--device", choices=["cpu", "gpu", "ascend"], default="cpu")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--quiet", action="store_true", help="only the JSON line, no line per image")
    args = p.parse_args(argv)
    try:
        if not os.path.isfile(args.model_file):
            raise ConfigError(f"--model_file {args.model_file}: no such file")
        meta = load_meta(args.model_file, args.config)
        paths = list_images(args.images)
        runner, why = make_runner(args.model_file, args.device)
        fixed = (meta.get("input_shape") or [None])[0]
        batch_size = fixed or args.batch_size
        print(f"runtime: {runner.name} ({args.device})" + (f"; {why}" if why else ""))
        classes = meta.get("classes")
        pipeline = make_pipeline(meta["preprocess"])   # built once, applied to every batch
        results = []
        for i in range(0, len(paths), batch_size):
            chunk = paths[i:i + batch_size]
            batch = preprocess(chunk, pipeline)
            pad = batch_size - len(chunk) if fixed else 0   # a fixed-batch model gets a full batch
            if pad:
                batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
            probs = softmax(runner(batch)[:len(chunk)].astype(np.float64))
            for path, pr in zip(chunk, probs):
                top = np.argsort(-pr)[:args.top]
                labels = [classes[j] if classes else str(j) for j in top]
                results.append({"image": path, "top": [[lab, float(pr[j])] for lab, j in zip(labels, top)]})
                if not args.quiet:
                    print(f"{path}: " + ", ".join(f"{lab} {100 * pr[j]:.1f}%" for lab, j in zip(labels, top)))
    except (ConfigError, RuntimeError, ValueError) as e:
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    summary = {"runtime": runner.name, "device": args.device, "images": len(results)}
    folders = [os.path.basename(os.path.dirname(r["image"])) for r in results]
    if classes and all(f in classes for f in folders):   # images sorted into class folders: score them
        summary["folder_top1"] = float(np.mean([r["top"][0][0] == f for r, f in zip(results, folders)]))
    summary.update(top1=[r["top"][0][0] for r in results], top1_prob=[r["top"][0][1] for r in results])
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

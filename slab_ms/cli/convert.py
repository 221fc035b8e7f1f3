"""Convert SLAB checkpoints between PyTorch (official code) and MindSpore.

    python convert.py --from torch --model slab_swin_tiny --input X.pth --output Y.ckpt [--verify]
    python convert.py --from mindspore --model slab_swin_tiny --input Y.ckpt --output X.pth

``--model`` may be omitted when the architecture can be inferred from the keys and shapes;
``--set key=value`` overrides sizes (e.g. ``--set embed_dim=16 --set depths=[2,2,2,2]``).
Reading never runs code from the file; a problem exits 1 with one line and writes nothing.

Detection (SLAB-Swin / Swin-PRepBN backbones, ``*_det`` models):

    python convert.py --from torch --input mask_rcnn.pth --output backbone.ckpt --backbone-only
    python convert.py --from mindspore --input backbone.ckpt --output backbone.pth
    python convert.py --from classification --input slab_swin_tiny.ckpt --output slab_swin_tiny_det.ckpt

An mmdet checkpoint (``backbone.`` keys) is recognised; its neck and head keys are refused unless
``--backbone-only`` skips them (and counts them). ``--from classification`` starts a detection
backbone from a classification checkpoint (.pth or .ckpt) and prints what loaded and what did not.
"""
import argparse
import sys

from .. import errors
from . import report


def main(argv=None):
    p = argparse.ArgumentParser(prog="convert.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", choices=["torch", "mindspore", "classification"], required=True,
                   help="classification: start a detection backbone from a classification checkpoint")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", help="registered model name (inferred from the checkpoint when omitted)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model size override, repeatable")
    p.add_argument("--key", help="take the state dict from this top-level key of a PyTorch checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--verify", action="store_true", help="run both models on one random input, print the difference")
    p.add_argument("--backbone-only", action="store_true",
                   help="mmdet detector checkpoint: convert its backbone, skipping (and counting) neck and head keys")
    p.add_argument("--hf-format", choices=["safetensors", "bin"], default="safetensors",
                   help="LLaMA --from mindspore: write model.safetensors (default) or pytorch_model.bin")
    args = p.parse_args(argv)
    from ..convert import hf
    from ..convert.api import mindspore_to_torch, torch_to_mindspore
    from ..convert.route import DETECTION, LLAMA, route_mindspore, route_torch
    from ..models.registry import is_model, list_models, parse_model_overrides
    try:
        overrides = parse_model_overrides(args.set)
        if args.model and not is_model(args.model):
            raise errors.CheckpointError(f"unknown model {args.model!r}; available: {', '.join(list_models())}")
        if args.source == "classification":
            return _convert_detection(args, overrides, None)
        route = route_torch(args.input, args.model, args.key) if args.source == "torch" else \
            route_mindspore(args.input, args.model, hf.sidecar_path(args.input))
        if route.kind == LLAMA:
            return _convert_llama(args, overrides, route)
        if route.kind == DETECTION:
            return _convert_detection(args, overrides, route)
        if args.source == "torch":
            name, overrides, n = torch_to_mindspore(args.input, args.output, args.model, overrides, args.key,
                                                    args.force, route=route)
            torch_path, ms_path = args.input, args.output
        else:
            name, overrides, n = mindspore_to_torch(args.input, args.output, args.model, overrides, args.force,
                                                    route=route)
            torch_path, ms_path = args.output, args.input
        shown = " ".join(f"{k}={v}" for k, v in overrides.items())
        print(f"converted {n} tensors of {name}{' (' + shown + ')' if shown else ''}: {args.input} -> {args.output}")
        if args.verify:
            from ..convert.verify import verify_conversion
            diff, rel = verify_conversion(name, overrides, torch_path, ms_path,
                                          key=args.key if args.source == "torch" else None)
            print(f"verify: max|diff| = {diff:.3e}, relative = {rel:.3e} (MindSpore GRAPH_MODE vs PyTorch, eval)")
    except errors.SlabError as e:
        report(e)
        return 1
    return 0


def _convert_detection(args, overrides, route):
    """The detection routes (slab_ms.convert.detection); raises SlabError for main to report."""
    from ..convert import detection
    if args.verify:
        raise errors.CheckpointError("--verify is not available for detection backbones (no PyTorch reference "
                                     "here; tests/test_detection.py checks parity with upstream's outputs)")
    if args.source == "classification":
        name, _, rep = detection.classification_to_detection(args.input, args.output, args.model, overrides,
                                                             args.key, args.force)
        print(f"wrote {name}: {args.input} -> {args.output}")
        for line in rep.lines():
            print(line)
        return 0
    if args.source == "torch":
        r = detection.detection_torch_to_mindspore(args.input, args.output, args.model, overrides, args.key,
                                                   args.backbone_only, args.force, loaded=route.loaded)
    else:
        r = detection.detection_mindspore_to_torch(args.input, args.output, args.model, overrides, args.force,
                                                   loaded=route.loaded)
    for line in r.lines(args.input, args.output):
        print(line)
    return 0


def _convert_llama(args, overrides, route):
    """The LLaMA routes (slab_ms.convert.hf): an HF folder or file <-> .ckpt + .config.json."""
    from ..convert import hf
    if args.source == "torch":
        name, overrides, n = hf.hf_to_mindspore(args.input, args.output, args.model, overrides, args.key, args.force,
                                                loaded=route.loaded)
        extra = f" (+ {hf.sidecar_path(args.output)})"
        torch_path, ms_path = args.input, args.output
    else:
        name, overrides, n = hf.mindspore_to_hf(args.input, args.output, args.model, overrides, args.force,
                                                args.hf_format, loaded=route.loaded)
        extra = ""
        torch_path, ms_path = args.output, args.input
    shown = " ".join(f"{k}={v}" for k, v in overrides.items())
    print(f"converted {n} tensors of {name}{' (' + shown + ')' if shown else ''}: {args.input} -> {args.output}{extra}")
    if args.verify:
        diff, rel = hf.verify_llama(torch_path, ms_path)
        print(f"verify: max|diff| = {diff:.3e}, relative = {rel:.3e} (MindSpore GRAPH_MODE vs PyTorch, eval logits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

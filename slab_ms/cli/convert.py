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
from . import check_model, prog, report

# Tensors upstream's PyTorch models keep as buffers and the MindSpore models compute (each cell's
# torch_buffers(), slab_ms/convert/mapping.py): the counts of the two directions differ by these.
COMPUTED_BUFFERS = ("relative_position_index", "attn_mask")


def main(argv=None):
    p = argparse.ArgumentParser(prog=prog("convert.py"), description=__doc__,
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
    from ..models.registry import parse_model_overrides
    route = None
    try:
        overrides = parse_model_overrides(args.set)
        if args.model:
            check_model(args.model)
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
        print(f"converted {n} tensors of {name}{' (' + shown + ')' if shown else ''}: {args.input} -> {args.output}"
              + _buffer_note(args, route, n))
        if args.verify:
            from ..convert.verify import verify_conversion
            diff, rel = verify_conversion(name, overrides, torch_path, ms_path,
                                          key=args.key if args.source == "torch" else None)
            print(f"verify: max|diff| = {diff:.3e}, relative = {rel:.3e} (MindSpore GRAPH_MODE vs PyTorch, eval)")
    except errors.CheckpointError as e:   # the hint first: the error itself can list hundreds of keys
        hint = _drop_model_hint(args, route)
        return report(errors.CheckpointError(f"{hint}; {e}" if hint else e))
    except errors.SlabError as e:
        return report(e)   # 2 for a bad flag (an unknown --model, a bad --set), 1 otherwise
    return 0


def _source_shapes(args, route):
    """The input's tensors as ``{torch name: shape}`` (what architecture inference reads), or None."""
    import numpy as np
    from ..checkpoint import model_params
    from ..convert.mapping import ms_to_torch_name
    from ..convert.torch_io import extract_state_dict
    if route is None or route.loaded is None or route.layout is not None:
        return None
    try:
        if args.source == "torch":
            sd, _ = extract_state_dict(route.loaded, key=args.key, path=args.input)
            return {k: tuple(v.shape) for k, v in sd.items()}
        return {ms_to_torch_name(k): tuple(np.shape(v)) for k, v in model_params(route.loaded).items()}
    except (errors.SlabError, AttributeError, TypeError, ValueError):
        return None


def _drop_model_hint(args, route):
    """A checkpoint refused as ``--model X``: when its keys read as another registered architecture,
    say which, and that leaving ``--model`` out infers it."""
    from ..convert.route import CLASSIFICATION
    from ..models.registry import infer_model
    if not args.model or route is None or route.kind != CLASSIFICATION:
        return ""
    shapes = _source_shapes(args, route)
    found = infer_model(shapes) if shapes else None
    if not found or found[0] == args.model:
        return ""
    return f"{args.input} reads as {found[0]}, not {args.model}: leave out --model to infer the architecture"


def _buffer_note(args, route, n):
    """Why this direction's count differs from the other's: upstream's PyTorch state dict also holds
    buffers that the MindSpore model computes instead of storing (COMPUTED_BUFFERS)."""
    shapes = _source_shapes(args, route)
    if shapes is None:
        return ""
    if args.source == "torch":   # the .pth has n parameters plus the buffers, checked and not stored
        counts = {b: sum(k.rsplit(".", 1)[-1] == b for k in shapes) for b in COMPUTED_BUFFERS}
        extra = len(shapes) - n
        if extra <= 0 or extra != sum(counts.values()):
            return ""
        listed = ", ".join(f"{c} {b}" for b, c in counts.items() if c)
        return (f" (the .pth's other {extra} tensors are buffers the MindSpore model computes: {listed}; "
                "checked against the model and not stored)")
    extra = n - len(shapes)   # the .pth gets the n - len(source) buffers written back
    if extra <= 0:
        return ""
    return (f" ({len(shapes)} parameters + {extra} buffers that upstream's model stores and the MindSpore model "
            f"computes: {' / '.join(COMPUTED_BUFFERS)})")


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

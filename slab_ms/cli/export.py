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
import sys

from .. import errors
from . import check_model, classes_hint, prog, report


def main(argv=None):
    p = argparse.ArgumentParser(prog=prog("export.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--mindir-compat", dest="mindir_compat", choices=["2.0"],
                   help="write the MindIR form MindSpore Lite 2.0 builds (mind_ir_version 1; PyPI's Lite is 2.0.0)")
    args = p.parse_args(argv)
    from ..deploy import build_for_export, check_export_request, export_model
    from ..models.registry import parse_model_overrides
    try:
        if args.batch < 1:
            raise errors.ConfigError("--batch must be >= 1")
        if args.model:
            check_model(args.model)
        check_export_request(args.format, args.dynamic_batch, args.output, args.force)
        try:
            net, meta = build_for_export(args.model, args.config, args.ckpt_path, parse_model_overrides(args.set),
                                         batch=args.batch, dynamic_batch=args.dynamic_batch, fmt=args.format,
                                         reparam=args.reparam)
        except errors.CheckpointError as e:   # another classifier size: say which --set fits
            raise errors.CheckpointError(str(e) + classes_hint(str(e), args.ckpt_path, "--set num_classes={n}")) \
                from None
        if args.mindir_compat and args.format != "MINDIR":
            raise errors.ConfigError("--mindir-compat applies to --format MINDIR")
        meta = export_model(net, meta, args.output, force=args.force, verify=args.verify,
                            mindir_compat=args.mindir_compat)
    except (errors.SlabError, ValueError) as e:
        return report(e)   # 2 for a bad flag or config, 1 for anything else
    keys = ("model", "format", "reparameterized", "input_shape", "norms_left", "verify_max_abs_diff", "mindir_compat")
    print(json.dumps({"output": args.output, **{k: meta[k] for k in keys if k in meta}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert SLAB checkpoints between PyTorch (official code) and MindSpore.

    python convert.py --from torch --model slab_swin_tiny --input X.pth --output Y.ckpt [--verify]
    python convert.py --from mindspore --model slab_swin_tiny --input Y.ckpt --output X.pth

``--model`` may be omitted when the architecture can be inferred from the keys and shapes;
``--set key=value`` overrides sizes (e.g. ``--set embed_dim=16 --set depths=[2,2,2,2]``).
Reading never runs code from the file; a problem exits 1 with one line and writes nothing.
"""
import argparse
import sys

from .. import errors
from . import report


def main(argv=None):
    p = argparse.ArgumentParser(prog="convert.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", choices=["torch", "mindspore"], required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", help="registered model name (inferred from the checkpoint when omitted)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model size override, repeatable")
    p.add_argument("--key", help="take the state dict from this top-level key of a PyTorch checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--verify", action="store_true", help="run both models on one random input, print the difference")
    args = p.parse_args(argv)
    from ..convert.api import mindspore_to_torch, torch_to_mindspore
    from ..models.registry import is_model, list_models, parse_model_overrides
    try:
        overrides = parse_model_overrides(args.set)
        if args.model and not is_model(args.model):
            raise errors.CheckpointError(f"unknown model {args.model!r}; available: {', '.join(list_models())}")
        if args.source == "torch":
            name, overrides, n = torch_to_mindspore(args.input, args.output, args.model, overrides, args.key,
                                                    args.force)
            torch_path, ms_path = args.input, args.output
        else:
            name, overrides, n = mindspore_to_torch(args.input, args.output, args.model, overrides, args.force)
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


if __name__ == "__main__":
    sys.exit(main())

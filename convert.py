"""Convert SLAB checkpoints between PyTorch (official code) and MindSpore.

    python convert.py --from torch --model slab_swin_tiny --input X.pth --output Y.ckpt [--verify]
    python convert.py --from mindspore --model slab_swin_tiny --input Y.ckpt --output X.pth

``--model`` may be omitted when the architecture can be inferred from the keys and shapes;
``--set key=value`` overrides sizes (e.g. ``--set embed_dim=16 --set depths=[2,2,2,2]``).
Reading never runs code from the file; a problem exits 1 with one line and writes nothing.
"""
import argparse
import ast
import sys

import slab_ms  # noqa: F401  (sets oneDNN ISA before MindSpore loads)
from slab_ms.convert.api import mindspore_to_torch, torch_to_mindspore
from slab_ms.convert.torch_io import CheckpointError, extract_state_dict, read_torch_checkpoint


def parse_overrides(items):
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CheckpointError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare string such as attn_type=LLSS
    return out


def verify(model, overrides, torch_path, ms_path, key=None, seed=0):
    """Run the PyTorch reference on the .pth and MindSpore (GRAPH_MODE) on the .ckpt; one random batch."""
    import numpy as np
    import mindspore as ms
    try:
        import torch
        import torch_ref
    except ImportError as e:
        raise CheckpointError(f"--verify needs torch and the torch_ref package ({e})") from None
    sd, _ = extract_state_dict(read_torch_checkpoint(torch_path), key=key, path=torch_path)
    ref = torch_ref.create_model(model, **overrides)
    ref.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in sd.items()}, strict=True)
    ref.eval()
    net = slab_ms.create_model(model, **overrides)
    slab_ms.load_checkpoint(net, ms_path)
    net.set_train(False)
    ms.set_context(mode=ms.GRAPH_MODE)
    size = overrides.get("img_size", 224)
    x = np.random.default_rng(seed).standard_normal((2, overrides.get("in_chans", 3), size, size)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = net(ms.Tensor(x)).asnumpy()
    diff = float(np.abs(got - expected).max())
    return diff, diff / max(1.0, float(np.abs(expected).max()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", choices=["torch", "mindspore"], required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", help="registered model name (inferred from the checkpoint when omitted)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model size override, repeatable")
    p.add_argument("--key", help="take the state dict from this top-level key of a PyTorch checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--verify", action="store_true", help="run both models on one random input, print the difference")
    args = p.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        if args.model and not slab_ms.is_model(args.model):
            raise CheckpointError(f"unknown model {args.model!r}; available: {', '.join(slab_ms.list_models())}")
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
            diff, rel = verify(name, overrides, torch_path, ms_path, key=args.key if args.source == "torch" else None)
            print(f"verify: max|diff| = {diff:.3e}, relative = {rel:.3e} (MindSpore GRAPH_MODE vs PyTorch, eval)")
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
